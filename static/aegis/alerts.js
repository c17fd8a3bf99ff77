// The alerts page: live rows, the sound cue, and Acknowledge / Resolve through the REST API.
//
// A `defect.alert` event that matches the page's filters (first page only) brings its row from
// the server (`/alerts/?id=<alert>`, the markup and buttons the server renders for this user)
// to the top of the list, highlighted and announced; with the sound cue on (off by default,
// remembered in this browser) it also beeps. An event about a row already shown (acknowledged,
// resolved) refreshes that row. Writes post JSON with the session's CSRF token; the endpoints
// check the user's permissions again.
(function () {
  "use strict";

  const SOUND_KEY = "aegis.alerts.sound";
  const FRESH_MS = 30000;
  let audio = null;

  function results() {
    return document.getElementById("alert-results");
  }

  function rowOf(id) {
    return document.querySelector(`[data-alert-id="${CSS.escape(String(id))}"]`);
  }

  function announce(text) {
    const announcer = document.getElementById("alert-announcer");
    if (announcer) announcer.textContent = text;
  }

  // -- the sound cue ----------------------------------------------------------------------

  const soundToggle = document.getElementById("alert-sound");
  if (soundToggle) {
    soundToggle.checked = localStorage.getItem(SOUND_KEY) === "on";
    soundToggle.addEventListener("change", () => {
      localStorage.setItem(SOUND_KEY, soundToggle.checked ? "on" : "off");
      // Browsers only let a page play sound after a user gesture: this change is one.
      if (soundToggle.checked) beep();
    });
  }

  function beep() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      if (audio.state === "suspended") audio.resume();
      const start = audio.currentTime;
      for (const [offset, pitch] of [[0, 880], [0.18, 660]]) {
        const oscillator = audio.createOscillator();
        const gain = audio.createGain();
        oscillator.frequency.value = pitch;
        gain.gain.setValueAtTime(0.0001, start + offset);
        gain.gain.exponentialRampToValueAtTime(0.2, start + offset + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.15);
        oscillator.connect(gain).connect(audio.destination);
        oscillator.start(start + offset);
        oscillator.stop(start + offset + 0.16);
      }
    } catch (error) {
      // No audio device or no Web Audio: the visual cue remains.
    }
  }

  // -- filters: the custom range's fields only when it is chosen -----------------------------

  const filters = document.getElementById("alert-filters");
  function showCustomRange() {
    if (!filters) return;
    const custom = filters.elements.range.value === "custom";
    for (const field of filters.querySelectorAll(".custom-range")) {
      field.hidden = !custom;
      for (const input of field.querySelectorAll("input")) input.disabled = !custom;
    }
  }
  if (filters) {
    filters.elements.range.addEventListener("change", showCustomRange);
    showCustomRange();
    // Links stay short and readable: filters left at "any" are not part of the URL.
    filters.addEventListener("htmx:configRequest", (request) => {
      const parameters = request.detail.parameters;
      for (const name of Array.from(parameters.keys())) {
        if (!parameters.getAll(name).some((value) => value !== "")) parameters.delete(name);
      }
    });
  }

  // -- rows from the server ---------------------------------------------------------------

  async function fetchRow(id) {
    const response = await fetch(`/alerts/?id=${encodeURIComponent(id)}`, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    });
    if (!response.ok) return null;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    return page.querySelector(`[data-alert-id="${CSS.escape(String(id))}"]`);
  }

  async function refreshRow(id, { focus = false } = {}) {
    const current = rowOf(id);
    const fresh = await fetchRow(id);
    if (!current || !fresh) return;
    if (current.classList.contains("fresh")) fresh.classList.add("fresh");
    current.replaceWith(fresh);
    if (focus) {
      const next = fresh.querySelector("button") || fresh.querySelector("h2 a");
      if (next) next.focus();
    }
  }

  function matchesFilters(event) {
    const filter = results().dataset;
    if (filter.single === "true" || filter.page !== "1") return false;
    const statuses = filter.filterStatus ? filter.filterStatus.split(",") : [];
    if (statuses.length && !statuses.includes(event.status)) return false;
    if (filter.filterStation && filter.filterStation !== event.station_id) return false;
    if (filter.filterLine && filter.filterLine !== String(event.line)) return false;
    if (filter.filterUntil && new Date(event.ts) > new Date(filter.filterUntil)) return false;
    return true;
  }

  async function insertRow(event) {
    const row = await fetchRow(event.alert);
    const list = document.getElementById("alert-list");
    if (!row || !list || rowOf(event.alert)) return;
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    row.classList.add("fresh");
    const badge = document.createElement("span");
    badge.className = "new-badge";
    badge.textContent = "New";
    row.querySelector(".alert-title").prepend(badge);
    list.prepend(row);
    setTimeout(() => {
      row.classList.remove("fresh");
      badge.remove();
    }, FRESH_MS);
    const count = results().querySelector(".result-count");
    if (count) {
      count.textContent = count.textContent.replace(/^\s*(\d+) alerts?/, (_, n) => {
        const total = Number(n) + 1;
        return `${total} alert${total === 1 ? "" : "s"}`;
      });
    }
    const score = Number(event.anomaly_score).toFixed(2);
    announce(`New alert at station ${event.station_id}` +
      (event.vin ? `, VIN ${event.vin}` : "") + `, score ${score}`);
    if (soundToggle && soundToggle.checked) beep();
  }

  if (window.Aegis) {
    Aegis.live.on("defect.alert", (event) => {
      if (rowOf(event.alert)) {
        refreshRow(event.alert);
      } else if (event.status === "open" && matchesFilters(event)) {
        insertRow(event);
      }
    });
    Aegis.live.on("hello", (event) => {
      // Alerts raised while the socket was down: read the list again.
      if (event.reconnected && window.htmx) {
        htmx.ajax("GET", location.pathname + location.search, {
          target: "#alert-results",
          select: "#alert-results",
          swap: "outerHTML",
        });
      }
    });
  }

  // -- acknowledge and resolve ------------------------------------------------------------

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": window.Aegis ? Aegis.live.csrfToken() : "",
      },
      body: JSON.stringify(body),
    });
    if (response.ok) return;
    let detail = `${response.status} ${response.statusText}`;
    try {
      const answer = await response.json();
      if (answer.detail) detail = answer.detail;
    } catch (error) {
      // not JSON: keep the status line
    }
    throw new Error(detail);
  }

  function showMessage(row, text) {
    const message = row.querySelector(".row-message");
    message.textContent = text;
    message.hidden = !text;
  }

  document.addEventListener("click", async (click) => {
    const button = click.target.closest("[data-action]");
    const row = button && button.closest("[data-alert-id]");
    if (!row || button.tagName !== "BUTTON") return;
    const form = row.querySelector('[data-action="resolve-form"]');
    const action = button.dataset.action;
    if (action === "acknowledge") {
      button.disabled = true;
      showMessage(row, "");
      try {
        await post(row.dataset.acknowledgeUrl, { note: "" });
        await refreshRow(row.dataset.alertId, { focus: true });
      } catch (error) {
        showMessage(row, `Not acknowledged: ${error.message}`);
        button.disabled = false;
      }
    } else if (action === "resolve" && form) {
      const opening = form.hidden;
      form.hidden = !opening;
      button.setAttribute("aria-expanded", String(opening));
      if (opening) form.querySelector("input").focus();
    } else if (action === "cancel" && form) {
      form.hidden = true;
      const toggle = row.querySelector('button[data-action="resolve"]');
      toggle.setAttribute("aria-expanded", "false");
      toggle.focus();
    }
  });

  document.addEventListener("submit", async (submitted) => {
    const form = submitted.target.closest('[data-action="resolve-form"]');
    if (!form) return;
    submitted.preventDefault();
    const row = form.closest("[data-alert-id]");
    const feedback = form.elements.feedback.value;
    if (!feedback) {
      showMessage(row, "Choose true defect or false alarm.");
      return;
    }
    const save = form.querySelector('button[type="submit"]');
    save.disabled = true;
    showMessage(row, "");
    try {
      await post(row.dataset.resolveUrl, { feedback: feedback, note: form.elements.note.value });
      await refreshRow(row.dataset.alertId, { focus: true });
    } catch (error) {
      showMessage(row, `Not resolved: ${error.message}`);
      save.disabled = false;
    }
  });
})();
