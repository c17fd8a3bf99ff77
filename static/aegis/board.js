// The plant board: applies live events to the tiles the server rendered.
//
//   station.state  what is at the station (unit, VIN, work order, firmware, downtime)
//   station.live   every ~0.5 s: min/max/last per signal and the latest Foresight score
//   defect.alert   a new alert (status "open") or one that changed status
//
// A tile's state is "alert" while it has open alerts, otherwise its MES state (down, occupied,
// idle); it is shown by colour, an icon and a word. After a reconnection the board is read
// again from the server, since events sent while the socket was down are lost.
(function () {
  "use strict";

  if (!document.getElementById("board") || !window.Aegis) return;

  const SPARK_WINDOW_MS = 60000;
  const STATES = { alert: "Alert", down: "Down", occupied: "Occupied", idle: "Idle" };
  const points = new Map(); // station code → [{t, min, max, last}] of its sparkline signal
  const knownAlerts = new Map(); // alert id → status, for alerts seen live
  const announcer = document.getElementById("board-announcer");

  function board() {
    return document.getElementById("board");
  }

  function tileOf(code) {
    return board().querySelector(`[data-station="${CSS.escape(String(code))}"]`);
  }

  function field(tile, name) {
    return tile.querySelector(`[data-field="${name}"]`);
  }

  function timeText(iso) {
    return new Date(iso).toLocaleTimeString("en-GB", {
      timeZone: board().dataset.timezone || "UTC",
      hour12: false,
    });
  }

  function number(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    const size = Math.abs(value);
    return value.toFixed(size >= 100 ? 0 : size >= 10 ? 1 : 2);
  }

  function announce(text) {
    if (announcer) announcer.textContent = text;
  }

  function link(href, text) {
    const anchor = document.createElement("a");
    anchor.href = href;
    anchor.textContent = text;
    return anchor;
  }

  // -- state ------------------------------------------------------------------------------

  function showState(tile) {
    const open = Number(tile.dataset.openAlerts || 0);
    const state = open > 0 ? "alert" : tile.dataset.mesState || "idle";
    const previous = tile.dataset.state;
    if (state === previous) return;
    tile.dataset.state = state;
    for (const name of Object.keys(STATES)) tile.classList.toggle(`state-${name}`, name === state);
    const badge = field(tile, "state");
    badge.dataset.value = state;
    badge.textContent = STATES[state];
    if (state === "alert" || state === "down" || previous === "alert" || previous === "down") {
      const name = tile.querySelector("h3").textContent.trim().replace(/\s+/g, " ");
      announce(`Station ${name}: ${STATES[state]}`);
    }
  }

  function showAlerts(tile) {
    const open = Number(tile.dataset.openAlerts || 0);
    const acknowledged = Number(tile.dataset.acknowledgedAlerts || 0);
    const paragraph = field(tile, "alerts");
    paragraph.hidden = open + acknowledged === 0;
    paragraph.querySelector(".alerts-text").textContent =
      `${open} open` + (acknowledged ? `, ${acknowledged} acknowledged` : "");
    showState(tile);
  }

  Aegis.live.on("station.state", (event) => {
    const tile = tileOf(event.station);
    if (!tile) return;
    field(tile, "vin").textContent = event.vin || "—";
    field(tile, "unit").textContent = event.unit || "—";
    const workOrder = field(tile, "work-order");
    if (event.work_order) {
      workOrder.replaceChildren(
        link(`/work-orders/${encodeURIComponent(event.work_order)}/`, event.work_order));
    } else {
      workOrder.textContent = "—";
    }
    const firmware = field(tile, "firmware");
    const components = Object.keys(event.firmware || {}).sort();
    if (components.length) {
      firmware.replaceChildren(...components.map((component) => {
        const span = document.createElement("span");
        span.className = "fw";
        span.textContent = `${component} ${event.firmware[component]}`;
        return span;
      }));
    } else {
      firmware.textContent = "—";
    }
    const downtime = field(tile, "downtime");
    if (event.downtime) {
      const since = document.createElement("time");
      since.dateTime = event.downtime.started_at;
      since.textContent = timeText(event.downtime.started_at);
      const marker = document.createElement("span");
      marker.setAttribute("aria-hidden", "true");
      marker.textContent = "■ ";
      const reason = event.downtime.reason_name ? ` · ${event.downtime.reason_name}` : "";
      const planned = event.downtime.planned ? " (planned)" : "";
      downtime.replaceChildren(marker, "Down since ", since, reason + planned);
      downtime.hidden = false;
    } else {
      downtime.hidden = true;
      downtime.replaceChildren();
    }
    tile.dataset.mesState = event.state;
    showState(tile);
  });

  // -- live signals and score ---------------------------------------------------------------

  function showScore(tile, score, threshold) {
    if (score === null || score === undefined || !threshold) return;
    const paragraph = field(tile, "score");
    paragraph.dataset.score = score;
    paragraph.dataset.threshold = threshold;
    const above = score >= threshold;
    paragraph.classList.toggle("above", above);
    paragraph.querySelector(".score-value").textContent =
      `${score.toFixed(2)} / ${threshold.toFixed(2)}`;
    paragraph.querySelector(".score-note").textContent = above ? "above threshold" : "";
    const percent = Math.max(0, Math.min(150, (100 * score) / threshold));
    paragraph.querySelector(".score-bar > span").style.width = `${percent}%`;
  }

  function draw(canvas, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    if (!series.length) return;
    const end = series[series.length - 1].t;
    const start = end - SPARK_WINDOW_MS;
    let low = Infinity;
    let high = -Infinity;
    for (const point of series) {
      if (point.min !== null) low = Math.min(low, point.min);
      if (point.max !== null) high = Math.max(high, point.max);
    }
    const nominalMin = parseFloat(canvas.dataset.nominalMin);
    const nominalMax = parseFloat(canvas.dataset.nominalMax);
    if (Number.isFinite(nominalMin)) low = Math.min(low, nominalMin);
    if (Number.isFinite(nominalMax)) high = Math.max(high, nominalMax);
    if (!Number.isFinite(low) || !Number.isFinite(high)) return;
    if (high - low < 1e-9) {
      low -= 1;
      high += 1;
    }
    const x = (t) => ((t - start) / SPARK_WINDOW_MS) * (width - 2) + 1;
    const y = (v) => height - 2 - ((v - low) / (high - low)) * (height - 4);
    const styles = getComputedStyle(canvas);
    // The nominal range, dashed: a value outside it is visible at a glance.
    context.strokeStyle = styles.getPropertyValue("--spark-nominal") || "#6b7b8c";
    context.setLineDash([3, 3]);
    context.lineWidth = 1;
    for (const bound of [nominalMin, nominalMax]) {
      if (!Number.isFinite(bound)) continue;
      context.beginPath();
      context.moveTo(0, y(bound));
      context.lineTo(width, y(bound));
      context.stroke();
    }
    context.setLineDash([]);
    // Min–max band of each interval, then the line of its last values; each run of the series
    // (Aegis.live.gaps) on its own, so a stretch without events reads as a gap.
    const band = styles.getPropertyValue("--spark-band") || "rgba(63,167,255,0.25)";
    const line = styles.getPropertyValue("--spark-line") || "#3fa7ff";
    for (const [first, end] of Aegis.live.gaps(series.map((point) => point.t)).runs) {
      const run = series.slice(first, end);
      context.fillStyle = band;
      context.beginPath();
      run.forEach((point, index) => {
        const px = x(point.t);
        const py = y(point.max ?? point.last);
        if (index === 0) context.moveTo(px, py);
        else context.lineTo(px, py);
      });
      for (let index = run.length - 1; index >= 0; index--) {
        const point = run[index];
        context.lineTo(x(point.t), y(point.min ?? point.last));
      }
      context.closePath();
      context.fill();
      context.strokeStyle = line;
      context.lineWidth = 1.5;
      context.beginPath();
      let started = false;
      for (const point of run) {
        if (point.last === null) continue;
        if (!started) context.moveTo(x(point.t), y(point.last));
        else context.lineTo(x(point.t), y(point.last));
        started = true;
      }
      context.stroke();
    }
  }

  Aegis.live.on("station.live", (event) => {
    const tile = tileOf(event.station);
    if (!tile) return;
    showScore(tile, event.score, event.threshold);
    const canvas = field(tile, "sparkline");
    if (!canvas) return;
    const signal = (event.signals || {})[canvas.dataset.signal];
    if (!signal) return;
    const series = points.get(event.station) || [];
    if (series.length && event.ts <= series[series.length - 1].t) return; // stale or repeated
    series.push({ t: event.ts, min: signal.min, max: signal.max, last: signal.last });
    while (series.length && series[0].t < event.ts - SPARK_WINDOW_MS) series.shift();
    points.set(event.station, series);
    field(tile, "signal-value").textContent = number(signal.last);
    draw(canvas, series);
  });

  // -- alerts ---------------------------------------------------------------------------------

  Aegis.live.on("defect.alert", (event) => {
    const tile = tileOf(event.station_id);
    if (!tile) return;
    const previous = knownAlerts.get(event.alert);
    knownAlerts.set(event.alert, event.status);
    if (event.status === "open" && previous === undefined) {
      tile.dataset.openAlerts = Number(tile.dataset.openAlerts || 0) + 1;
      showAlerts(tile);
      showScore(tile, event.anomaly_score, event.threshold);
    } else if (event.status !== previous) {
      resync(); // acknowledged or resolved: the counts come from the server
    }
  });

  // -- after a reconnection: the server's view ---------------------------------------------

  let resyncing = false;
  async function resync() {
    if (resyncing) return;
    resyncing = true;
    try {
      const response = await fetch(location.pathname, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("board");
      if (!fresh) return;
      board().replaceWith(fresh);
      for (const [code, series] of points) {
        const tile = tileOf(code);
        const canvas = tile && field(tile, "sparkline");
        if (canvas) draw(canvas, series);
      }
    } catch (error) {
      // The next reconnection tries again.
    } finally {
      resyncing = false;
    }
  }

  Aegis.live.on("hello", (event) => {
    if (event.reconnected) resync();
  });

  // The sparkline's drawing, for tests of what a series looks like.
  window.Aegis.board = { draw };

  window.addEventListener("resize", () => {
    for (const [code, series] of points) {
      const tile = tileOf(code);
      const canvas = tile && field(tile, "sparkline");
      if (canvas) draw(canvas, series);
    }
  });
})();
