// monitor admin: the live backtest of the topic editor. Plain JS, no dependencies, shipped with the package.
// As the admin types, the form (with its CSRF token) is posted to the backtest URL, debounced; the server
// answers with an HTML fragment (stories, scores, reasons, the diff against the saved version).
(function () {
  "use strict";
  var form = document.getElementById("topic-form");
  var target = document.getElementById("backtest");
  if (!form || !target) return;
  var state = document.getElementById("backtest-state");
  var url = form.getAttribute("data-backtest");
  var timer = null;
  var seq = 0;
  var DEBOUNCE_MS = 450;
  var PENDING_POLL_MS = 800;

  function setState(text) { if (state) state.textContent = text; }

  function run() {
    var mine = ++seq;
    var body = new URLSearchParams(new FormData(form));
    var token = form.querySelector("input[name=csrf_token]");
    setState("updating…");
    target.setAttribute("aria-busy", "true");
    fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": token ? token.value : "" }
    }).then(function (r) {
      return r.text().then(function (html) { return { ok: r.ok, status: r.status, html: html }; });
    }).then(function (res) {
      if (mine !== seq) return;  // a newer request is on its way
      if (!res.ok) { setState("failed (HTTP " + res.status + ")"); return; }
      target.innerHTML = res.html;
      target.setAttribute("aria-busy", "false");
      target.setAttribute("data-seq", String(mine));
      setState("");
      // Matches are final; stories and alerts may still be computing on the server: ask again shortly.
      if (target.querySelector("[data-pending]")) {
        setState("grouping into stories…");
        if (timer) clearTimeout(timer);
        timer = setTimeout(run, PENDING_POLL_MS);
      }
    }).catch(function () {
      if (mine === seq) setState("failed: is the service running?");
    });
  }

  function schedule() {
    if (timer) clearTimeout(timer);
    seq++;  // an answer still on its way is for the form as it was: drop it
    setState("waiting…");
    timer = setTimeout(run, DEBOUNCE_MS);
  }

  // "near miss" on a listed match: its headline joins the counterexamples (once), and the backtest re-runs, so
  // the admin sees what the topic loses before saving anything. The headline is read from a data attribute and
  // written as text, never as HTML.
  function addLine(button) {
    var box = document.getElementById("f-" + button.getAttribute("data-add-to"));
    var text = (button.getAttribute("data-text") || "").trim();
    if (!box || !text) return;
    var lines = box.value.split("\n").map(function (l) { return l.trim(); });
    if (lines.indexOf(text) < 0) {
      var kept = box.value.replace(/\s+$/, "");
      box.value = kept ? kept + "\n" + text : text;
      box.scrollTop = box.scrollHeight;
    }
    button.disabled = true;
    button.textContent = "added";
    schedule();
  }

  target.addEventListener("click", function (e) {
    var b = e.target && e.target.closest ? e.target.closest("button[data-add-to]") : null;
    if (b) addLine(b);
  });
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  run();
})();
