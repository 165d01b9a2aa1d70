// Publisher for the socket.io reference: @socket.io/redis-emitter, the socket.io way to emit from
// outside a server (every server's Redis adapter receives the message and broadcasts locally).
//   node publish.js --redis redis://127.0.0.1:6379/0 --key brosbench-sio
// Reads one JSON command per line on stdin, answers one JSON line per command on stdout:
//   {"rate": 20, "count": 200, "rooms": ["all"], "tag": 3, "pad": 100}
//   -> {"published": 200, "t_first": ..., "t_last": ..., "t_pub": [...], "per_room": [200], "late_max": ...}
// Event n goes to rooms[n % rooms.length]; rate 0 = as fast as possible. Timestamps are Unix
// seconds (float) from the same wall clock the Python clients read.
"use strict";

const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");
const readline = require("readline");
const { performance } = require("perf_hooks");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const seqs = new Map(); // room -> last seq, kept across commands like a stream's head

const now = () => (performance.timeOrigin + performance.now()) / 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function run(emitter, cmd) {
  const rooms = cmd.rooms;
  const perRoom = new Array(rooms.length).fill(0);
  const pad = "x".repeat(cmd.pad || 0);
  const count = cmd.count;
  const rate = cmd.rate || 0;
  const start = now() + 0.05;
  const tPub = [];
  let tFirst = null;
  let tLast = null;
  let lateMax = 0;
  for (let n = 0; n < count; n++) {
    if (rate > 0) {
      const due = start + n / rate;
      let wait = due - now();
      if (wait > 0.002) await sleep((wait - 0.001) * 1000);
      wait = due - now();
      if (wait < 0) lateMax = Math.max(lateMax, -wait);
    } else if (n % 50 === 0) {
      await new Promise((resolve) => setImmediate(resolve));
    }
    const r = n % rooms.length;
    const t0 = now();
    const room = rooms[r];
    const seq = (seqs.get(room) || 0) + 1;
    seqs.set(room, seq);
    emitter.to(room).emit("event", {
      type: "event",
      stream: room,
      seq,
      event: "notice",
      ts: new Date(t0 * 1000).toISOString(),
      data: { text: `bench r=${cmd.tag} n=${n} t0=${t0.toFixed(6)} ${pad}`, level: "info" },
    });
    perRoom[r] += 1;
    tPub.push(Math.round(t0 * 1e6) / 1e6);
    if (tFirst === null) tFirst = t0;
    tLast = t0;
  }
  await sleep(5); // let the client flush its last PUBLISH
  return {
    published: count,
    t_first: tFirst,
    t_last: tLast,
    t_pub: tPub,
    per_room: perRoom,
    late_max: lateMax,
    mode: "emitter",
  };
}

async function main() {
  const client = createClient({ url: arg("redis", "redis://127.0.0.1:6379/0") });
  client.on("error", (err) => console.error("redis", err.message));
  await client.connect();
  const emitter = new Emitter(client, { key: arg("key", "socket.io") });
  console.log(JSON.stringify({ ready: true }));
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.quit) break;
    console.log(JSON.stringify(await run(emitter, cmd)));
  }
  await client.quit();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
