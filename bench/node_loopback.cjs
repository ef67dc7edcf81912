// Preloaded into the Portkey gateway by bench/peers.py (`node --require <this file>`).
// Its start script listens on a port with no host, which Node binds to every
// interface; this makes any listen() that names no host bind to 127.0.0.1 only.
"use strict";
const net = require("net");

const LOOPBACK = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

net.Server.prototype.listen = function listenOnLoopback(...args) {
  const first = args[0];
  if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    // listen(port[, host][, backlog][, callback]): a missing or undefined host becomes loopback
    if (typeof args[1] !== "string") {
      args.splice(1, args[1] === undefined && args.length > 1 ? 1 : 0, LOOPBACK);
    }
  } else if (first !== null && typeof first === "object" && first.port !== undefined) {
    args[0] = { ...first, host: LOOPBACK };
  }
  return originalListen.apply(this, args);
};
