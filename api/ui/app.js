// turnq's web UI: live updates, keyboard shortcuts, theme, confirmations.
// Written for this project; no framework and no build step. Every page works without
// it (forms post and redirect); this file adds what needs a script.
"use strict";

(function () {
  const KINDS = [
    "task.submitted", "task.queued", "task.started", "task.output", "task.completed",
    "task.retrying", "task.failed", "task.blocked", "task.lease_lost", "task.released",
    "task.cancelled", "task.approved", "task.responded", "task.retried", "queue.paused",
    "queue.resumed",
  ];
  // The shortest gap between two refreshes of a page's live regions.
  const REFRESH_GAP_MS = 1000;

  // --- theme: follows the system unless the toggle chose one --------------------
  const root = document.documentElement;
  const THEMES = ["auto", "light", "dark"];
  function applyTheme(theme) {
    if (theme === "auto") root.removeAttribute("data-theme");
    else root.setAttribute("data-theme", theme);
    const button = document.getElementById("theme");
    if (button) button.title = "Theme: " + (theme === "auto" ? "follows the system" : theme) + " (click to change)";
  }
  function storedTheme() {
    try { return localStorage.getItem("turnq-theme") || "auto"; } catch (_) { return "auto"; }
  }
  applyTheme(storedTheme());

  // --- relative times -------------------------------------------------------------
  function span(secs) {
    if (secs < 60) return Math.round(secs) + " s";
    if (secs < 3600) return Math.round(secs / 60) + " min";
    if (secs < 86400) return (secs / 3600).toFixed(1) + " h";
    return (secs / 86400).toFixed(1) + " d";
  }
  function refreshTimes(scope) {
    const now = Date.now();
    for (const el of (scope || document).querySelectorAll("time[datetime]")) {
      const secs = (now - Date.parse(el.getAttribute("datetime"))) / 1000;
      if (Number.isNaN(secs)) continue;
      el.textContent = secs < 0 ? "in " + span(-secs) : secs < 5 ? "just now" : span(secs) + " ago";
    }
  }

  // --- live updates from /v1/events/stream -----------------------------------------
  const live = {
    url: null, cursor: null, source: null, retry: 1000,
    inflight: false, dirty: false, last: 0, timer: null,
  };

  function setLiveState(text, cls) {
    const el = document.getElementById("live-state");
    if (!el) return;
    el.textContent = text;
    el.className = "live-state " + cls;
  }

  function streamUrl() {
    const u = new URL(live.url, location.href);
    if (live.cursor) u.searchParams.set("after", live.cursor);
    return u.toString();
  }

  function connect() {
    if (live.source || document.hidden) return;
    const source = new EventSource(streamUrl(), { withCredentials: true });
    live.source = source;
    source.onopen = function () { live.retry = 1000; setLiveState("● live", "on"); };
    source.onerror = function () {
      // Reconnect ourselves, from our cursor: the browser's own retry would resend
      // the page's first `after=`, which wins over Last-Event-ID.
      disconnect();
      setLiveState("○ reconnecting", "off");
      setTimeout(connect, live.retry);
      live.retry = Math.min(live.retry * 2, 30000);
    };
    for (const kind of KINDS) source.addEventListener(kind, onEvent);
    source.addEventListener("reconnect", function (e) {
      const data = JSON.parse(e.data);
      live.cursor = data.reconnect_from || live.cursor;
      disconnect();
      // A client told to reconnect fell behind: the page may have missed changes.
      live.dirty = true;
      connect();
      scheduleRefresh();
    });
  }

  function disconnect() {
    if (live.source) { live.source.close(); live.source = null; }
  }

  function onEvent(e) {
    if (e.lastEventId) live.cursor = e.lastEventId;
    let event;
    try { event = JSON.parse(e.data); } catch (_) { return; }
    const output = document.querySelector("[data-output]");
    if (output && event.stream && event.stream.id === output.dataset.task) {
      // The page already shows this task's output up to the output's data-version,
      // and its fields up to the fields' (read a moment apart, so they can differ).
      if (event.kind === "task.output") {
        if (event.version > Number(output.dataset.version || 0)) appendOutput(output, event);
        return;
      }
      const fields = document.querySelector("[data-live][data-version]");
      if (fields && event.version <= Number(fields.dataset.version || 0)) return;
    } else if (event.kind === "task.output") {
      return; // output changes no list or counter
    }
    live.dirty = true;
    scheduleRefresh();
  }

  function appendOutput(output, event) {
    const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    const chunks = (event.data && event.data.chunks) || [];
    output.append(chunks.map(function (c) { return c.text || ""; }).join(""));
    output.dataset.version = String(event.version);
    const none = document.getElementById("no-output");
    if (none) none.remove();
    if (atBottom) output.scrollTop = output.scrollHeight;
  }

  function scheduleRefresh() {
    if (live.timer || live.inflight || !live.dirty || document.hidden) return;
    const wait = Math.max(0, live.last + REFRESH_GAP_MS - Date.now());
    live.timer = setTimeout(refresh, wait);
  }

  // Replaces the page's live regions with a fresh copy of the page: one request at a
  // time, never while hidden; a region the user is working in (focus, ticked boxes,
  // an open details) is left alone.
  async function refresh() {
    live.timer = null;
    if (live.inflight || document.hidden) return;
    live.inflight = true;
    live.dirty = false;
    live.last = Date.now();
    try {
      const response = await fetch(location.href, { credentials: "same-origin", headers: { "x-turnq-live": "1" } });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const region of document.querySelectorAll("[data-live]")) {
          const next = fresh.getElementById(region.id);
          if (!next || busy(region)) continue;
          region.innerHTML = next.innerHTML;
          for (const attr of ["data-version"]) {
            if (next.hasAttribute(attr)) region.setAttribute(attr, next.getAttribute(attr));
          }
          refreshTimes(region);
        }
        document.dispatchEvent(new CustomEvent("turnq:refreshed"));
      }
    } catch (_) {
      live.dirty = true;
    } finally {
      live.inflight = false;
      scheduleRefresh();
    }
  }

  // A form someone typed into (an answer, an edited tool input) counts as busy even
  // after the focus left it: a refresh would throw the typing away.
  function busy(region) {
    return region.contains(document.activeElement) && document.activeElement !== document.body
      || region.querySelector("input[type=checkbox]:checked, details[open], form[data-edited]") !== null;
  }

  document.addEventListener("input", function (e) {
    const form = e.target.closest && e.target.closest("form");
    if (form && form.method === "post") form.dataset.edited = "1";
  });

  document.addEventListener("visibilitychange", function () {
    if (!live.url) return;
    if (document.hidden) {
      disconnect();
      setLiveState("‖ paused", "off");
    } else {
      connect();
      scheduleRefresh();
    }
  });

  // --- keyboard ----------------------------------------------------------------------
  let rowIndex = -1;
  let pendingG = false;
  function rows() { return Array.from(document.querySelectorAll("[data-row]")); }
  function selectRow(i) {
    const all = rows();
    if (all.length === 0) return;
    rowIndex = Math.max(0, Math.min(all.length - 1, i));
    for (const r of all) r.classList.remove("selected");
    all[rowIndex].classList.add("selected");
    all[rowIndex].scrollIntoView({ block: "nearest" });
  }
  function openRow(row) {
    const href = row.dataset.href || (row.querySelector("a[href]") || {}).href;
    if (href) location.href = href;
  }
  const GO = { o: "/", t: "/tasks", i: "/inbox", w: "/workers", s: "/sessions", a: "/agents" };

  document.addEventListener("keydown", function (e) {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) {
      if (e.key === "Escape") t.blur();
      return;
    }
    if (pendingG) {
      pendingG = false;
      if (GO[e.key]) { e.preventDefault(); location.href = GO[e.key]; }
      return;
    }
    switch (e.key) {
      case "/": {
        const find = document.getElementById("find");
        if (find) { e.preventDefault(); find.focus(); find.select(); }
        break;
      }
      case "j": selectRow(rowIndex + 1); break;
      case "k": selectRow(rowIndex - 1); break;
      case "Enter": {
        const row = rows()[rowIndex];
        if (row) { e.preventDefault(); openRow(row); }
        break;
      }
      case "g": pendingG = true; break;
      case "?": {
        const help = document.getElementById("help");
        if (help && !help.open) { e.preventDefault(); help.showModal(); }
        break;
      }
    }
  });

  // --- clicks: confirmations, select-all, rows -------------------------------------------
  document.addEventListener("submit", function (e) {
    const form = e.target;
    let question = (e.submitter && e.submitter.dataset.confirm) || (form.dataset && form.dataset.confirm);
    if (!question) return;
    const ticked = form.querySelectorAll("input[type=checkbox][name=id]:checked").length;
    question = question.replace("{n}", String(ticked));
    if (!window.confirm(question)) e.preventDefault();
  }, true);

  document.addEventListener("change", function (e) {
    if (e.target.matches("[data-select-all]")) {
      const form = e.target.closest("form");
      for (const box of form.querySelectorAll("input[type=checkbox][name=id]")) box.checked = e.target.checked;
    }
  });

  document.addEventListener("click", function (e) {
    const row = e.target.closest("[data-row][data-href]");
    if (!row || e.target.closest("a, button, input, label, select, summary, form")) return;
    openRow(row);
  });

  document.addEventListener("DOMContentLoaded", function () {
    const button = document.getElementById("theme");
    if (button) {
      applyTheme(storedTheme());
      button.addEventListener("click", function () {
        const next = THEMES[(THEMES.indexOf(storedTheme()) + 1) % THEMES.length];
        try { localStorage.setItem("turnq-theme", next); } catch (_) { /* private mode */ }
        applyTheme(next);
      });
    }
    refreshTimes();
    setInterval(function () { if (!document.hidden) refreshTimes(); }, 30000);
    live.url = document.body.dataset.stream || null;
    if (live.url) {
      const first = new URL(live.url, location.href).searchParams.get("after");
      live.cursor = first || null;
      setLiveState("○ connecting", "off");
      connect();
    }
  });
})();
