// Work orders: progress stays current. When the MES state of a station changes (a
// `station.state` event: a unit arrived, left or was completed), the page's tables are read
// again from the server — at most every few seconds, never while keyboard focus is inside one
// (a table must not change under a reader), and the refresh is announced politely.
(function () {
  "use strict";

  const TABLES = ["#work-orders tbody", "#work-order-units tbody", "#work-order-summary"];
  const QUIET_MS = 3000;
  const present = TABLES.filter((selector) => document.querySelector(selector));
  if (!present.length || !window.Aegis || !Aegis.live) return;

  const shown = new Set(
    Array.from(document.querySelectorAll("[data-work-order]")).map((row) => row.dataset.workOrder)
  );
  const detail = document.getElementById("work-order-summary");
  let timer = null;
  let status = document.getElementById("work-orders-updated");
  if (!status) {
    status = document.createElement("p");
    status.id = "work-orders-updated";
    status.className = "visually-hidden";
    status.setAttribute("role", "status");
    document.querySelector("main").appendChild(status);
  }

  async function refresh() {
    timer = null;
    const focused = document.activeElement;
    if (present.some((selector) => document.querySelector(selector).contains(focused))) {
      timer = setTimeout(refresh, QUIET_MS);
      return;
    }
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const selector of present) {
        const fresh = page.querySelector(selector);
        if (fresh) document.querySelector(selector).replaceWith(fresh);
      }
      status.textContent = `Progress updated at ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      // The next change tries again.
    }
  }

  Aegis.live.on("station.state", (event) => {
    // The list shows some work orders; a detail page one. Other changes do not concern us.
    if (!detail && event.work_order && !shown.has(event.work_order)) return;
    if (detail && event.work_order && !location.pathname.endsWith(`/${encodeURIComponent(event.work_order)}/`)) return;
    if (!timer) timer = setTimeout(refresh, QUIET_MS);
  });
})();
