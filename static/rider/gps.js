// The rider's GPS while on duty: watchPosition, fixes worse than the accuracy limit dropped, at most one fix a second, honest about pauses.

export class Tracker extends EventTarget {
  /** @param {{accuracyLimit: number}} options metres (0: keep every fix) */
  constructor({ accuracyLimit = 100 } = {}) {
    super();
    this.accuracyLimit = accuracyLimit;
    this.watchId = null;
    this.lastTs = 0;
    this.state = "off";
    this._onVisibility = () => this._visibility();
  }

  start() {
    if (this.watchId != null) return;
    if (!("geolocation" in navigator)) return this._setState("unsupported");
    this._setState(document.hidden ? "paused" : "waiting");
    document.addEventListener("visibilitychange", this._onVisibility);
    this.watchId = navigator.geolocation.watchPosition(
      (position) => this._position(position),
      (error) => this._error(error),
      { enableHighAccuracy: true, maximumAge: 0, timeout: 60000 },
    );
  }

  stop() {
    if (this.watchId != null) navigator.geolocation.clearWatch(this.watchId);
    this.watchId = null;
    document.removeEventListener("visibilitychange", this._onVisibility);
    this._setState("off");
  }

  _position(position) {
    const { latitude, longitude, accuracy, heading, speed } = position.coords;
    if (this.state !== "paused" || !document.hidden) this._setState("on", { accuracy });
    if (this.accuracyLimit > 0 && accuracy > this.accuracyLimit) {
      this._setState("inaccurate", { accuracy });
      return;
    }
    // The server keeps one fix a second anyway: sending more only costs battery and data.
    if (position.timestamp - this.lastTs < 1000) return;
    this.lastTs = position.timestamp;
    const fix = { lat: latitude, lng: longitude, ts: new Date(position.timestamp).toISOString() };
    if (Number.isFinite(accuracy)) fix.accuracy = accuracy;
    if (Number.isFinite(heading)) fix.heading = heading; // NaN while standing still
    if (Number.isFinite(speed)) fix.speed = speed;
    this.dispatchEvent(new CustomEvent("fix", { detail: fix }));
  }

  _error(error) {
    if (error.code === error.PERMISSION_DENIED) this._setState("denied");
    else this._setState("searching");
  }

  _visibility() {
    // Browsers stop locating a page in the background: say so rather than pretend.
    if (document.hidden) this._setState("paused");
    else if (this.state === "paused") this._setState("waiting");
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }
}
