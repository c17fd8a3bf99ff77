// Home page: dependency status from /readyz and live plant events from /ws/events/.
(function () {
  "use strict";

  const services = document.getElementById("services");
  const events = document.getElementById("events");
  const socketState = document.getElementById("socket-state");

  function item(text, cls) {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    return li;
  }

  async function refreshServices() {
    try {
      const response = await fetch(services.dataset.url, { credentials: "same-origin" });
      const body = await response.json();
      services.replaceChildren(
        ...Object.entries(body.checks).map(([name, check]) =>
          item(`${name}: ${check.status} (${check.latency_ms} ms) ${check.detail}`, check.status)
        ),
        item(`celery: ${body.celery.status}` +
          (body.celery.last_heartbeat_age_s !== undefined
            ? ` (heartbeat ${body.celery.last_heartbeat_age_s} s ago)` : ""), body.celery.status)
      );
    } catch (error) {
      services.replaceChildren(item(`status unavailable: ${error}`, "down"));
    }
  }

  function connect(delay) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/events/`);
    socket.onopen = () => { socketState.textContent = "connected"; delay = 1000; };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "hello") {
        socketState.textContent = `connected as ${event.user}`;
        return;
      }
      const stamp = new Date().toLocaleTimeString();
      events.prepend(item(`${stamp} ${event.type} ${JSON.stringify(event)}`));
      while (events.children.length > 50) events.lastChild.remove();
    };
    socket.onclose = () => {
      socketState.textContent = `disconnected, retrying in ${delay / 1000} s`;
      setTimeout(() => connect(Math.min(delay * 2, 30000)), delay);
    };
  }

  refreshServices();
  setInterval(refreshServices, 10000);
  connect(1000);
})();
