// Preloaded into Node servers the tests run (`node --require loopback.cjs server.js`): every
// server they start listens on 127.0.0.1 at a port the system picks, whatever address the
// server asks for, and the first one prints `listening on 127.0.0.1:PORT` on stderr once it
// does, so that the test can reach it without a fixed port and without leaving loopback.
"use strict";

const net = require("node:net");

const listen = net.Server.prototype.listen;
let announced = false;

net.Server.prototype.listen = function (...args) {
  const callback = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  this.once("listening", () => {
    if (!announced) {
      announced = true;
      process.stderr.write(`listening on 127.0.0.1:${this.address().port}\n`);
    }
  });
  return listen.call(this, { host: "127.0.0.1", port: 0 }, callback);
};
