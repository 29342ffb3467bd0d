"""The Sparkplug B payload schema (Eclipse Tahu ``sparkplug_b.proto``) as protobuf message classes.

``sparkplug_b.proto`` next to this file is Tahu's schema unchanged (EPL-2.0, eclipse-tahu/tahu commit
5736e40). ``_FILE`` is its compiled FileDescriptorProto, regenerated with::

    python -m grpc_tools.protoc -I gateway/mqtt --descriptor_set_out=/tmp/spb.desc sparkplug_b.proto
    # then file[0] of the set, renamed gridedge/sparkplug_b.proto, serialised

The classes live in a private descriptor pool, so a Sparkplug library loaded in the same process (their
generated ``sparkplug_b_pb2`` registers the same message names in protobuf's default pool) cannot clash.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool, message_factory

__all__ = ["DATATYPE", "Payload"]

_FILE = (
    b'\n\x1agridedge/sparkplug_b.proto\x12\x19org.eclipse.tahu.protobuf"\x87\x1c\n\x07'
    b"Payload\x12\x1c\n\ttimestamp\x18\x01 \x01(\x04R\ttimestamp\x12C\n\x07metrics\x18\x02 \x03(\x0b2).org"
    b".eclipse.tahu.protobuf.Payload.MetricR\x07metrics\x12\x10\n\x03seq\x18\x03 \x01(\x04R"
    b"\x03seq\x12\x12\n\x04uuid\x18\x04 \x01(\tR\x04uuid\x12\x12\n\x04body\x18\x05 \x01(\x0cR\x04body\x1a\xc4\x05\n\x08Template\x12\x18\n"
    b"\x07version\x18\x01 \x01(\tR\x07version\x12C\n\x07metrics\x18\x02 \x03(\x0b2).org.eclipse.tahu."
    b"protobuf.Payload.MetricR\x07metrics\x12U\n\nparameters\x18\x03 \x03(\x0b25.org.e"
    b"clipse.tahu.protobuf.Payload.Template.ParameterR\nparameters\x12"
    b"!\n\x0ctemplate_ref\x18\x04 \x01(\tR\x0btemplateRef\x12#\n\ris_definition\x18\x05 \x01(\x08R\x0ci"
    b"sDefinition\x1a\xaf\x03\n\tParameter\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x12\n\x04type\x18\x02 \x01(\rR"
    b"\x04type\x12\x1d\n\tint_value\x18\x03 \x01(\rH\x00R\x08intValue\x12\x1f\n\nlong_value\x18\x04 \x01(\x04H\x00R\t"
    b"longValue\x12!\n\x0bfloat_value\x18\x05 \x01(\x02H\x00R\nfloatValue\x12#\n\x0cdouble_value"
    b"\x18\x06 \x01(\x01H\x00R\x0bdoubleValue\x12%\n\rboolean_value\x18\x07 \x01(\x08H\x00R\x0cbooleanValue"
    b"\x12#\n\x0cstring_value\x18\x08 \x01(\tH\x00R\x0bstringValue\x12x\n\x0fextension_value\x18\t \x01"
    b"(\x0b2M.org.eclipse.tahu.protobuf.Payload.Template.Parameter.Pa"
    b"rameterValueExtensionH\x00R\x0eextensionValue\x1a#\n\x17ParameterValueExt"
    b"ension*\x08\x08\x01\x10\x80\x80\x80\x80\x02B\x07\n\x05value*\x08\x08\x06\x10\x80\x80\x80\x80\x02\x1a\x9e\x05\n\x07DataSet\x12$\n\x0enum_of_co"
    b"lumns\x18\x01 \x01(\x04R\x0cnumOfColumns\x12\x18\n\x07columns\x18\x02 \x03(\tR\x07columns\x12\x14\n\x05types"
    b"\x18\x03 \x03(\rR\x05types\x12B\n\x04rows\x18\x04 \x03(\x0b2..org.eclipse.tahu.protobuf.Payl"
    b"oad.DataSet.RowR\x04rows\x1a\x88\x03\n\x0cDataSetValue\x12\x1d\n\tint_value\x18\x01 \x01(\rH\x00R"
    b"\x08intValue\x12\x1f\n\nlong_value\x18\x02 \x01(\x04H\x00R\tlongValue\x12!\n\x0bfloat_value\x18\x03 "
    b"\x01(\x02H\x00R\nfloatValue\x12#\n\x0cdouble_value\x18\x04 \x01(\x01H\x00R\x0bdoubleValue\x12%\n\rbo"
    b"olean_value\x18\x05 \x01(\x08H\x00R\x0cbooleanValue\x12#\n\x0cstring_value\x18\x06 \x01(\tH\x00R\x0bs"
    b"tringValue\x12x\n\x0fextension_value\x18\x07 \x01(\x0b2M.org.eclipse.tahu.proto"
    b"buf.Payload.DataSet.DataSetValue.DataSetValueExtensionH\x00R\x0eex"
    b"tensionValue\x1a!\n\x15DataSetValueExtension*\x08\x08\x01\x10\x80\x80\x80\x80\x02B\x07\n\x05value\x1ad\n\x03"
    b"Row\x12S\n\x08elements\x18\x01 \x03(\x0b27.org.eclipse.tahu.protobuf.Payload.Da"
    b"taSet.DataSetValueR\x08elements*\x08\x08\x02\x10\x80\x80\x80\x80\x02*\x08\x08\x05\x10\x80\x80\x80\x80\x02\x1a\xf5\x04\n\rPropert"
    b"yValue\x12\x12\n\x04type\x18\x01 \x01(\rR\x04type\x12\x17\n\x07is_null\x18\x02 \x01(\x08R\x06isNull\x12\x1d\n\tint_v"
    b"alue\x18\x03 \x01(\rH\x00R\x08intValue\x12\x1f\n\nlong_value\x18\x04 \x01(\x04H\x00R\tlongValue\x12!\n\x0bf"
    b"loat_value\x18\x05 \x01(\x02H\x00R\nfloatValue\x12#\n\x0cdouble_value\x18\x06 \x01(\x01H\x00R\x0bdoub"
    b"leValue\x12%\n\rboolean_value\x18\x07 \x01(\x08H\x00R\x0cbooleanValue\x12#\n\x0cstring_val"
    b"ue\x18\x08 \x01(\tH\x00R\x0bstringValue\x12]\n\x11propertyset_value\x18\t \x01(\x0b2..org.ecl"
    b"ipse.tahu.protobuf.Payload.PropertySetH\x00R\x10propertysetValue\x12c"
    b"\n\x12propertysets_value\x18\n \x01(\x0b22.org.eclipse.tahu.protobuf.Paylo"
    b"ad.PropertySetListH\x00R\x11propertysetsValue\x12r\n\x0fextension_value\x18\x0b"
    b" \x01(\x0b2G.org.eclipse.tahu.protobuf.Payload.PropertyValue.Prope"
    b'rtyValueExtensionH\x00R\x0eextensionValue\x1a"\n\x16PropertyValueExtensio'
    b"n*\x08\x08\x01\x10\x80\x80\x80\x80\x02B\x07\n\x05value\x1au\n\x0bPropertySet\x12\x12\n\x04keys\x18\x01 \x03(\tR\x04keys\x12H\n\x06v"
    b"alues\x18\x02 \x03(\x0b20.org.eclipse.tahu.protobuf.Payload.PropertyValu"
    b"eR\x06values*\x08\x08\x03\x10\x80\x80\x80\x80\x02\x1am\n\x0fPropertySetList\x12P\n\x0bpropertyset\x18\x01 \x03(\x0b2"
    b"..org.eclipse.tahu.protobuf.Payload.PropertySetR\x0bpropertyset"
    b'*\x08\x08\x02\x10\x80\x80\x80\x80\x02\x1a\xef\x01\n\x08MetaData\x12"\n\ris_multi_part\x18\x01 \x01(\x08R\x0bisMultiPart\x12'
    b"!\n\x0ccontent_type\x18\x02 \x01(\tR\x0bcontentType\x12\x12\n\x04size\x18\x03 \x01(\x04R\x04size\x12\x10\n\x03se"
    b"q\x18\x04 \x01(\x04R\x03seq\x12\x1b\n\tfile_name\x18\x05 \x01(\tR\x08fileName\x12\x1b\n\tfile_type\x18\x06 \x01(\t"
    b"R\x08fileType\x12\x10\n\x03md5\x18\x07 \x01(\tR\x03md5\x12 \n\x0bdescription\x18\x08 \x01(\tR\x0bdescripti"
    b"on*\x08\x08\t\x10\x80\x80\x80\x80\x02\x1a\x9c\x07\n\x06Metric\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x14\n\x05alias\x18\x02 \x01(\x04R\x05"
    b"alias\x12\x1c\n\ttimestamp\x18\x03 \x01(\x04R\ttimestamp\x12\x1a\n\x08datatype\x18\x04 \x01(\rR\x08datat"
    b"ype\x12#\n\ris_historical\x18\x05 \x01(\x08R\x0cisHistorical\x12!\n\x0cis_transient\x18\x06 \x01"
    b"(\x08R\x0bisTransient\x12\x17\n\x07is_null\x18\x07 \x01(\x08R\x06isNull\x12G\n\x08metadata\x18\x08 \x01(\x0b2+"
    b".org.eclipse.tahu.protobuf.Payload.MetaDataR\x08metadata\x12N\n\npro"
    b"perties\x18\t \x01(\x0b2..org.eclipse.tahu.protobuf.Payload.PropertySe"
    b"tR\nproperties\x12\x1d\n\tint_value\x18\n \x01(\rH\x00R\x08intValue\x12\x1f\n\nlong_value\x18\x0b"
    b" \x01(\x04H\x00R\tlongValue\x12!\n\x0bfloat_value\x18\x0c \x01(\x02H\x00R\nfloatValue\x12#\n\x0cdoub"
    b"le_value\x18\r \x01(\x01H\x00R\x0bdoubleValue\x12%\n\rboolean_value\x18\x0e \x01(\x08H\x00R\x0cbool"
    b"eanValue\x12#\n\x0cstring_value\x18\x0f \x01(\tH\x00R\x0bstringValue\x12!\n\x0bbytes_value"
    b"\x18\x10 \x01(\x0cH\x00R\nbytesValue\x12Q\n\rdataset_value\x18\x11 \x01(\x0b2*.org.eclipse.ta"
    b"hu.protobuf.Payload.DataSetH\x00R\x0cdatasetValue\x12T\n\x0etemplate_valu"
    b"e\x18\x12 \x01(\x0b2+.org.eclipse.tahu.protobuf.Payload.TemplateH\x00R\rtemp"
    b"lateValue\x12i\n\x0fextension_value\x18\x13 \x01(\x0b2>.org.eclipse.tahu.protob"
    b"uf.Payload.Metric.MetricValueExtensionH\x00R\x0eextensionValue\x1a \n\x14"
    b"MetricValueExtension*\x08\x08\x01\x10\x80\x80\x80\x80\x02B\x07\n\x05value*\x08\x08\x06\x10\x80\x80\x80\x80\x02*\xf2\x03\n\x08DataTy"
    b"pe\x12\x0b\n\x07Unknown\x10\x00\x12\x08\n\x04Int8\x10\x01\x12\t\n\x05Int16\x10\x02\x12\t\n\x05Int32\x10\x03\x12\t\n\x05Int64\x10\x04\x12\t"
    b"\n\x05UInt8\x10\x05\x12\n\n\x06UInt16\x10\x06\x12\n\n\x06UInt32\x10\x07\x12\n\n\x06UInt64\x10\x08\x12\t\n\x05Float\x10\t\x12\n\n\x06"
    b"Double\x10\n\x12\x0b\n\x07Boolean\x10\x0b\x12\n\n\x06String\x10\x0c\x12\x0c\n\x08DateTime\x10\r\x12\x08\n\x04Text\x10\x0e\x12\x08\n"
    b"\x04UUID\x10\x0f\x12\x0b\n\x07DataSet\x10\x10\x12\t\n\x05Bytes\x10\x11\x12\x08\n\x04File\x10\x12\x12\x0c\n\x08Template\x10\x13\x12\x0f\n\x0bP"
    b"ropertySet\x10\x14\x12\x13\n\x0fPropertySetList\x10\x15\x12\r\n\tInt8Array\x10\x16\x12\x0e\n\nInt16Arr"
    b"ay\x10\x17\x12\x0e\n\nInt32Array\x10\x18\x12\x0e\n\nInt64Array\x10\x19\x12\x0e\n\nUInt8Array\x10\x1a\x12\x0f\n\x0bUInt"
    b"16Array\x10\x1b\x12\x0f\n\x0bUInt32Array\x10\x1c\x12\x0f\n\x0bUInt64Array\x10\x1d\x12\x0e\n\nFloatArray\x10\x1e\x12"
    b"\x0f\n\x0bDoubleArray\x10\x1f\x12\x10\n\x0cBooleanArray\x10 \x12\x0f\n\x0bStringArray\x10!\x12\x11\n\rDateT"
    b'imeArray\x10"B,\n\x19org.eclipse.tahu.protobufB\x0fSparkplugBProto'
)

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(_FILE)
Payload = message_factory.GetMessageClass(_pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))
#: Sparkplug DataType codes by name ("Double" → 10)
DATATYPE = {v.name: v.number for v in _pool.FindEnumTypeByName("org.eclipse.tahu.protobuf.DataType").values}
