// Minimal socket.io 4 server with the Redis adapter: the reference for bench/fanout.py.
//   node server.js --port 9301 --redis redis://127.0.0.1:6379/0 --key brosbench-sio
// A client joins the room named by its `room` query parameter on connect. Events reach rooms
// through Redis only: bench/socketio/publish.js uses @socket.io/redis-emitter, and every server
// process (adapter) broadcasts to its local sockets. WebSocket transport only, no compression.
"use strict";

const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const http = require("http");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", "9301"));
const redisUrl = arg("redis", "redis://127.0.0.1:6379/0");
const key = arg("key", "socket.io");

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error("redis pub", err.message));
  sub.on("error", (err) => console.error("redis sub", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const io = new Server({
    transports: ["websocket"],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    maxHttpBufferSize: 1e6,
    // BROS's heartbeat interval (a ping every 20 s, protocol "Heartbeat and presence"); socket.io's
    // default is 25 s. Both servers then ping each socket once in fanout.py's 20 s fixed-rate step.
    pingInterval: 20000,
  });
  io.adapter(createAdapter(pub, sub, { key }));
  io.on("connection", (socket) => {
    const room = socket.handshake.query.room;
    if (typeof room === "string" && room) socket.join(room);
  });
  const httpServer = http.createServer();
  io.attach(httpServer);
  httpServer.listen(port, "127.0.0.1");
  // Let the adapter's PSUBSCRIBE land before announcing readiness.
  setTimeout(() => console.log(JSON.stringify({ ready: true, port, pid: process.pid })), 300);

  const stop = () => {
    io.close();
    httpServer.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
