// The agent's page, live: polls the page's JSON URL (with the session) for the
// agent's state and, when it changed, the conversation, spending and actions as
// server-rendered HTML; sends chat messages without a reload; copies the kill
// switch recipe. No inline script (the CSP forbids it); without JS the page
// still works by plain form posts and reloads.
(function () {
  "use strict";
  var live = document.getElementById("agent-live");
  if (!live) { return; }
  var statusEl = document.getElementById("agent-status");
  var reasonEl = document.getElementById("agent-reason");
  var chatForm = document.getElementById("chat-form");
  var chatState = document.getElementById("chat-state");
  var FAST = 1000, SLOW = 3000, fastUntil = 0, timer = null;

  function replace(id, html) {
    var el = document.getElementById(id);
    if (el && typeof html === "string") { el.innerHTML = html; }
  }

  function showConversation(html) {
    var box = document.getElementById("conversation");
    var open = Array.prototype.map.call(box.querySelectorAll("details[open]"), function (d) { return d.id; });
    var list = box.querySelector(".chat");
    var atBottom = !list || list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    box.innerHTML = html;
    open.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
    list = box.querySelector(".chat");
    if (list && atBottom) { list.scrollTop = list.scrollHeight; }
  }

  function show(state) {
    statusEl.textContent = state.label;
    statusEl.className = "status status-" + state.status;
    statusEl.dataset.status = state.status;
    reasonEl.textContent = state.reason ? state.reason.charAt(0).toUpperCase() + state.reason.slice(1) : "";
    if (state.conversation !== undefined) {
      showConversation(state.conversation);
      replace("usage", state.usage);
      replace("agent-actions", state.actions);
      live.dataset.version = state.version;
    }
  }

  function schedule() {
    window.clearTimeout(timer);
    if (document.hidden) { return; }  // resumes on visibilitychange
    timer = window.setTimeout(poll, Date.now() < fastUntil ? FAST : SLOW);
  }

  function poll() {
    var url = live.dataset.liveUrl + "?version=" + encodeURIComponent(live.dataset.version || "");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (state) { if (state) { show(state); } schedule(); })
      .catch(schedule);
  }

  function send(event) {
    event.preventDefault();
    var data = new FormData(chatForm);
    if (!String(data.get("content") || "").trim()) { chatState.textContent = "Write a message first."; return; }
    var button = chatForm.querySelector("button[type=submit]");
    button.disabled = true;
    chatState.textContent = "Sending…";
    fetch(chatForm.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { Accept: "application/json", "X-Requested-With": "fetch" }
    })
      .then(function (response) { return response.json().then(function (body) { return { ok: response.ok, body: body }; }); })
      .then(function (result) {
        if (result.ok) {
          chatForm.reset();
          chatState.textContent = "Sent. The reply appears here.";
          fastUntil = Date.now() + 120000;
          poll();
        } else {
          chatState.textContent = "Not sent: " + (result.body.error || "please try again.");
        }
      })
      .catch(function () { chatState.textContent = "Not sent: the connection failed. Try again."; })
      .then(function () { button.disabled = false; });
  }

  if (chatForm) {
    chatForm.addEventListener("submit", send);
    chatForm.addEventListener("keydown", function (event) {
      // Ctrl+Enter (or Cmd+Enter) sends; Enter alone makes a new line.
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { chatForm.requestSubmit(); }
    });
  }

  var copy = document.getElementById("copy-recipe");
  if (copy && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", function () {
      var text = document.getElementById(copy.dataset.copy).textContent;
      navigator.clipboard.writeText(text).then(
        function () { document.getElementById("copy-state").textContent = "Copied."; },
        function () { document.getElementById("copy-state").textContent = "Copy failed: select the text instead."; }
      );
    });
  }

  // Health: the container as its droplet reports it, and its last output, from the
  // owner API (session auth; GETs need no CSRF token), every HEALTH_EVERY ms.
  var health = document.getElementById("health");
  var HEALTH_EVERY = 10000, healthTimer = null;
  function text(id, value) { document.getElementById(id).textContent = value; }
  function mib(bytes) { return Math.round(bytes / 1048576) + " MiB"; }
  function showHealth(report) {
    var c = report.container;
    if (report.container_error) { text("health-container", "The droplet did not answer: " + report.container_error); }
    else if (!c) { text("health-container", "None (the agent is " + report.status.replace("_", " ") + ")."); }
    else { text("health-container", c.status + (c.running ? "" : " (exit code " + c.exit_code + ")") + " on " + report.droplet); }
    text("health-restarts", c ? c.restart_count + " / " + (c.oom_killed ? "yes: it was killed for using too much memory" : "no") : "–");
    var r = report.resources;
    text("health-resources", r ? r.cpu_percent.toFixed(1) + " % / " + mib(r.memory_bytes) + " of " + mib(r.memory_limit_bytes) : "–");
    text("health-alive", report.runtime_alive ? "yes" : "not lately");
    return c;
  }
  function checkHealth() {
    var get = { credentials: "same-origin", headers: { Accept: "application/json" } };
    fetch(health.dataset.statusUrl, get)
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (report) {
        if (!report || !showHealth(report)) { return; }
        return fetch(health.dataset.logsUrl + "?tail=40", { credentials: "same-origin", headers: { Accept: "text/plain" } })
          .then(function (response) { return response.ok ? response.text() : null; })
          .then(function (lines) { if (lines !== null) { text("logs", lines || "No output yet."); } });
      })
      .catch(function () { /* the next round tries again */ })
      .then(function () {
        window.clearTimeout(healthTimer);
        if (!document.hidden) { healthTimer = window.setTimeout(checkHealth, HEALTH_EVERY); }
      });
  }
  if (health) { checkHealth(); }

  var list = document.querySelector("#conversation .chat");
  if (list) { list.scrollTop = list.scrollHeight; }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { return; }
    poll();
    if (health) { window.clearTimeout(healthTimer); checkHealth(); }
  });
  if (live.dataset.version) { schedule(); }
})();
