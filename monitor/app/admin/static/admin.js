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
  var refocus = null;  // where keyboard focus goes once the fragment is replaced (`focusPlace`)
  if (!target.hasAttribute("tabindex")) target.setAttribute("tabindex", "-1");  // focusable by script only

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
      // A button clicked in the list keeps the admin's place, unless they went on to type in the form meanwhile.
      var active = document.activeElement;
      var place = refocus && (!active || active === document.body || target.contains(active)) ? refocus
        : focusPlace(active);
      refocus = null;
      target.innerHTML = res.html;
      if (place) restoreFocus(place);
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

  // Keyboard focus inside the fragment survives its replacement (a re-run, a pending poll): it goes to the same
  // item's button in the same list, else to the next item's that still offers one, else to an earlier one's,
  // else to the list's heading; not back to the start of the page.
  function focusPlace(el) {
    if (!el || el === target || !target.contains(el)) return null;
    var list = el.closest("[data-list]");
    var li = el.closest("li[data-item]");
    if (!list) return { list: null, ids: [] };
    var all = Array.prototype.map.call(list.querySelectorAll("li[data-item]"), function (n) {
      return n.getAttribute("data-item");
    });
    var at = li ? all.indexOf(li.getAttribute("data-item")) : -1;
    var ids = at < 0 ? [] : all.slice(at).concat(all.slice(0, at).reverse());
    return { list: list.getAttribute("data-list"), ids: ids };
  }

  function restoreFocus(place) {
    var list = place.list ? target.querySelector('[data-list="' + place.list + '"]') : null;
    for (var i = 0; list && i < place.ids.length; i++) {
      var b = list.querySelector('li[data-item="' + place.ids[i] + '"] button.add-line:not([disabled])');
      if (b) { b.focus(); return; }
    }
    var heading = list ? (list.querySelector("[tabindex='-1']") || document.getElementById(list.getAttribute("aria-labelledby") || "")) : null;
    (heading || target).focus();
  }

  // "near miss" on a listed match (its headline joins the counterexamples) or "example" on a closest miss (it
  // joins the examples): the line is added once and the backtest re-runs, so the admin sees what the topic loses
  // or gains before saving anything. The headline is read from a data attribute and written as text, never as
  // HTML.
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
    refocus = focusPlace(button);  // before it is disabled (a disabled button loses focus)
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
