// The rider page's persistent store (IndexedDB): status taps waiting to be sent, GPS fixes waiting to be posted, and the last known state.
//
// Everything here survives a reload, a crash and a page opened offline from the service worker;
// actions and fixes come back in the order they were stored (auto-increment keys).

const DB_NAME = "bros-rider";
const STORES = ["actions", "fixes", "state"];

function promised(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class RiderStore {
  /**
   * Open (and create) the database of one user: two riders on one phone never see each other's queue.
   * Where IndexedDB is unavailable (some private modes) the store lives in memory; `persistent` says which.
   */
  static async open(userId) {
    try {
      return new RiderStore(await RiderStore._openDatabase(userId));
    } catch {
      return new MemoryStore();
    }
  }

  static async _openDatabase(userId) {
    const request = indexedDB.open(`${DB_NAME}-${userId}`, 1);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore("actions", { keyPath: "seq", autoIncrement: true });
      db.createObjectStore("fixes", { keyPath: "seq", autoIncrement: true });
      db.createObjectStore("state");
    };
    return promised(request);
  }

  constructor(db) {
    this.db = db;
    this.persistent = true;
  }

  _store(name, mode = "readonly") {
    if (!STORES.includes(name)) throw new Error(`no store ${name}`);
    return this.db.transaction(name, mode).objectStore(name);
  }

  /** Everything in `name`, oldest first (at most `limit`). */
  all(name, limit) {
    return promised(this._store(name).getAll(null, limit));
  }

  count(name) {
    return promised(this._store(name).count());
  }

  /** Append `value`; resolves with it, its `seq` filled in. */
  async add(name, value) {
    const seq = await promised(this._store(name, "readwrite").add(value));
    return { ...value, seq };
  }

  put(name, value) {
    return promised(this._store(name, "readwrite").put(value));
  }

  delete(name, seqs) {
    const store = this._store(name, "readwrite");
    return Promise.all([].concat(seqs).map((seq) => promised(store.delete(seq))));
  }

  get(key) {
    return promised(this._store("state").get(key));
  }

  set(key, value) {
    return promised(this._store("state", "readwrite").put(value, key));
  }
}

/** The same interface in memory: the page still works, but a reload forgets what was queued. */
class MemoryStore {
  constructor() {
    this.persistent = false;
    this.stores = { actions: new Map(), fixes: new Map() };
    this.state = new Map();
    this.next = 1;
  }

  async all(name, limit = Infinity) {
    return [...this.stores[name].values()].slice(0, limit);
  }

  async count(name) {
    return this.stores[name].size;
  }

  async add(name, value) {
    const stored = { ...value, seq: this.next++ };
    this.stores[name].set(stored.seq, stored);
    return stored;
  }

  async put(name, value) {
    this.stores[name].set(value.seq, value);
  }

  async delete(name, seqs) {
    for (const seq of [].concat(seqs)) this.stores[name].delete(seq);
  }

  async get(key) {
    return this.state.get(key);
  }

  async set(key, value) {
    this.state.set(key, structuredClone(value));
  }
}
