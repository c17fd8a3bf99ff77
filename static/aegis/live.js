// The one websocket of a page: /ws/events/, reconnecting with back-off, and a small event bus.
//
//   Aegis.live.on("station.state", (event) => …)   // subscribe by event type ("*": every event)
//   Aegis.live.on("hello", (event) => …)           // after each (re)connection; event.reconnected
//   Aegis.live.audience({station: "1"})            // before the first on(): only one station
//
// The socket opens with the first subscription, so pages that listen to nothing open none. The
// header's #live-status says "Live", "Connecting…" or "Reconnecting in N s" (text and colour).
// After a reconnection pages should re-read what they show: events sent meanwhile are lost.
(function () {
  "use strict";

  const RETRY_FIRST_MS = 1000;
  const RETRY_MAX_MS = 30000;
  // Close codes of aegis/consumers.py: retrying cannot help with these.
  const FINAL_CLOSES = {
    4401: "Signed out: reload the page to sign in",
    4403: "Live updates are not part of your role",
    4404: "Live updates unavailable for this page",
  };

  const handlers = new Map(); // type → Set of functions
  let socket = null;
  let query = "";
  let retryMs = RETRY_FIRST_MS;
  let retryTimer = null;
  let everConnected = false;
  let stopped = false;
  let status = "off";

  const indicator = document.getElementById("live-status");

  function setStatus(state, text) {
    status = state;
    if (indicator) {
      indicator.hidden = false;
      indicator.dataset.state = state;
      indicator.textContent = text;
    }
    dispatch({ type: "status", state: state, text: text });
  }

  function dispatch(event) {
    for (const key of [event.type, "*"]) {
      const set = handlers.get(key);
      if (!set) continue;
      for (const handler of Array.from(set)) {
        try {
          handler(event);
        } catch (error) {
          // One page's bug must not silence the other subscribers.
          console.error("Aegis.live handler failed", event.type, error);
        }
      }
    }
  }

  function url() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/ws/events/` + (query ? `?${query}` : "");
  }

  function connect() {
    if (stopped || socket) return;
    clearTimeout(retryTimer);
    setStatus(everConnected ? "reconnecting" : "connecting",
      everConnected ? "Reconnecting…" : "Connecting…");
    let opened;
    try {
      opened = new WebSocket(url());
    } catch (error) {
      scheduleRetry();
      return;
    }
    socket = opened;
    opened.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (event.type === "hello") {
        event.reconnected = everConnected;
        everConnected = true;
        retryMs = RETRY_FIRST_MS;
        setStatus("live", "Live");
      }
      dispatch(event);
    };
    opened.onclose = (closed) => {
      if (socket !== opened) return; // replaced on purpose (a new audience)
      socket = null;
      if (stopped) return;
      if (FINAL_CLOSES[closed.code]) {
        stopped = true;
        setStatus("offline", FINAL_CLOSES[closed.code]);
        return;
      }
      scheduleRetry();
    };
  }

  function scheduleRetry() {
    // Exponential back-off with jitter, so a restarted server is not hit by every browser at once.
    const delay = Math.round(retryMs * (0.8 + Math.random() * 0.4));
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    setStatus("reconnecting", `Reconnecting in ${Math.max(1, Math.round(delay / 1000))} s`);
    retryTimer = setTimeout(connect, delay);
  }

  function on(type, handler) {
    if (!handlers.has(type)) handlers.set(type, new Set());
    handlers.get(type).add(handler);
    if (type !== "status") connect();
    return () => handlers.get(type).delete(handler);
  }

  function audience(options) {
    const params = new URLSearchParams();
    if (options && options.station) params.set("station", options.station);
    if (options && options.line) params.set("line", String(options.line));
    query = params.toString();
    if (socket) {
      const previous = socket;
      socket = null;
      previous.close(1000);
      connect();
    }
  }

  // Browsers suspend background tabs; come back at once rather than after the back-off.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !socket && !stopped && handlers.size) {
      retryMs = RETRY_FIRST_MS;
      connect();
    }
  });
  window.addEventListener("pagehide", () => {
    stopped = true;
    if (socket) socket.close(1000);
  });
  window.addEventListener("pageshow", (shown) => {
    // Back from the browser's page cache: the socket was closed on the way out.
    if (shown.persisted && handlers.size) {
      stopped = false;
      connect();
    }
  });

  // A stretch without data (the station stopped, the PLC went quiet) should read as a gap in a
  // chart, not as a straight line from the last value before it to the first after.
  // gaps(xs) cuts ascending instants into runs without such a gap: {step, runs}, with step the
  // typical (median) step and runs the [start, end) index pairs; a new run starts where an
  // instant lies more than GAP_STEPS typical steps after the one before.
  const GAP_STEPS = 5;

  function gaps(xs) {
    const whole = { step: null, runs: xs.length ? [[0, xs.length]] : [] };
    if (xs.length < 3) return whole;
    const steps = [];
    for (let i = 1; i < xs.length; i++) steps.push(xs[i] - xs[i - 1]);
    const step = steps.slice().sort((a, b) => a - b)[Math.floor(steps.length / 2)];
    if (!(step > 0)) return whole;
    const runs = [];
    let start = 0;
    for (let i = 1; i < xs.length; i++) {
      if (xs[i] - xs[i - 1] > GAP_STEPS * step) {
        runs.push([start, i]);
        start = i;
      }
    }
    runs.push([start, xs.length]);
    return { step, runs };
  }

  window.Aegis = window.Aegis || {};
  window.Aegis.live = {
    on: on,
    audience: audience,
    get status() {
      return status;
    },
    // Shared helpers of the page scripts.
    gaps: gaps,
    csrfToken() {
      const meta = document.querySelector('meta[name="csrf-token"]');
      return meta ? meta.content : "";
    },
  };
})();
