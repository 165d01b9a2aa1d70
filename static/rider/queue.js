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
  /** Open (and create) the database of one user: two riders on one phone never see each other's queue. */
  static async open(userId) {
    const request = indexedDB.open(`${DB_NAME}-${userId}`, 1);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore("actions", { keyPath: "seq", autoIncrement: true });
      db.createObjectStore("fixes", { keyPath: "seq", autoIncrement: true });
      db.createObjectStore("state");
    };
    return new RiderStore(await promised(request));
  }

  constructor(db) {
    this.db = db;
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
