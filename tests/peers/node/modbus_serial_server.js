// A Modbus TCP server on npm modbus-serial (its ServerTCP), for gridedge's interop tests.
//
//   node modbus_serial_server.js PORT [SIZE]   listens on 127.0.0.1:PORT; each table has SIZE entries
//                                              (default 1000), a read past them gets ILLEGAL_DATA_ADDRESS.
// Commands on stdin, one per line, each acknowledged with "ok" on stdout (the same as libmodbus_server.c):
//   hr|ir|co|di ADDR V...    set holding / input registers, coils, discrete inputs from ADDR
//   exc FC ADDR COUNT CODE   answer a read of FC touching ADDR..ADDR+COUNT-1 with exception CODE
//   hang 0|1                 1: take requests and never answer them (a hung device)
//   clear                    no exceptions, no hang
// Prints "listening PORT" once it accepts connections.
"use strict";
const readline = require("readline");
const ModbusRTU = require("modbus-serial");

const port = parseInt(process.argv[2], 10);
const size = process.argv[3] ? parseInt(process.argv[3], 10) : 1000;
const tables = {
    hr: new Uint16Array(size), ir: new Uint16Array(size), co: new Uint8Array(size), di: new Uint8Array(size),
};
let excs = [];
let hang = false;

// One value per address, answered through the callback (modbus-serial asks address by address and builds
// the frame itself; an error with modbusErrorCode becomes an exception response).
function getter(table, fc) {
    return function (addr, _unitID, cb) {
        if (hang) return; // never answered
        for (const e of excs) {
            if (e.fc === fc && addr >= e.addr && addr < e.addr + e.count) {
                return cb({ modbusErrorCode: e.code, msg: "scripted exception" });
            }
        }
        if (addr >= size) return cb({ modbusErrorCode: 2, msg: "no such address" });
        const v = tables[table][addr];
        return cb(null, table === "co" || table === "di" ? v !== 0 : v);
    };
}

const vector = {
    getHoldingRegister: getter("hr", 3),
    getInputRegister: getter("ir", 4),
    getCoil: getter("co", 1),
    getDiscreteInput: getter("di", 2),
};

const server = new ModbusRTU.ServerTCP(vector, { host: "127.0.0.1", port: port, unitID: 255 });
server.on("initialized", () => process.stdout.write(`listening ${port}\n`));
server.on("serverError", (err) => {
    process.stderr.write(`cannot listen: ${err}\n`);
    process.exit(1);
});
server.on("socketError", () => {}); // a client that went away

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
    const tok = line.trim().split(/\s+/);
    if (tok[0] === "hang") hang = tok[1] === "1";
    else if (tok[0] === "clear") { excs = []; hang = false; }
    else if (tok[0] === "exc" && tok.length === 5) {
        const [fc, addr, count, code] = tok.slice(1).map(Number);
        excs.push({ fc, addr, count, code });
    } else if (tok[0] in tables && tok.length >= 3) {
        const addr = Number(tok[1]);
        tok.slice(2).forEach((v, i) => {
            if (addr + i < size) tables[tok[0]][addr + i] = Number(v);
        });
    }
    process.stdout.write("ok\n");
});
rl.on("close", () => process.exit(0)); // the test went away: stop
