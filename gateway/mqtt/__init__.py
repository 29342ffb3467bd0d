"""Local operators over MQTT: the paho client and its publish loop (``client``), the store-and-forward outbox
(``outbox``), operator commands (``commands``), value deadbands (``deadband``), latest-value-wins slots for
live values (``conflation``), their JSON payloads (``payloads``), the Sparkplug B edge node (``sparkplug``,
``sparkplug_schema``) and the paho client set-up both sessions share (``connection``)."""
