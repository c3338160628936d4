// tunnelnb's notebook terminal: xterm.js as an anywidget ES module (bundled by build.mjs).
//
// Two modes, one bundle (the Python classes in tunnelnb/notebook/widgets/terminal.py):
//   "live"   (Terminal): keys go to the kernel as custom messages {type: "keys", page, seq, data} (the
//            kernel may handle them out of order: it types them by seq); it acks {type: "ack", page, seq}
//            (every key up to seq is typed) and sends the device's output as binary buffers
//            {type: "output", at} (at = the chunk's offset in the output stream, so a lost or doubled
//            chunk is noticed and asked for again with {type: "sync", have}).
//   "replay" (TerminalReplay): the model's `events` ([seconds, text] pairs) played with their timing.
//
// Comm messages from the browser reach the kernel only while it is idle: keys typed while a cell runs
// wait in the kernel, and the status line says "kernel busy: N keys waiting" until their acks arrive.

import { Terminal } from "@xterm/xterm";
import { WebLinksAddon } from "@xterm/addon-web-links";
import "@xterm/xterm/css/xterm.css";
import "./terminal.css";

const BUSY_AFTER_MS = 500; // keys unacknowledged this long: the kernel is busy
const LOG_LIMIT = 2 * 1024 * 1024; // output bytes a model keeps for views made later
const IDLE_CAP_S = 2; // a replay's long pauses are cut to this (unless the recording says otherwise)

// A widget's shared state (output log, key counters, views), by the widget's `_instance` id: anywidget
// hands initialize() and every render() a different proxy of the same model.
const models = new Map();

function stateOf(model) {
  const key = model.get("_instance");
  let state = models.get(key);
  if (!state) {
    const page = Math.random().toString(36).slice(2); // the kernel orders key messages per page by seq
    state = { log: [], logBytes: 0, have: 0, syncing: false, page, seq: 0, acked: 0, since: 0, views: new Set() };
    models.set(key, state);
  }
  return state;
}

function bytesOf(buffer) {
  // ipywidgets hands buffers over as DataView or ArrayBuffer, depending on the front end
  if (buffer instanceof ArrayBuffer) return new Uint8Array(buffer);
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

function remember(state, data) {
  state.log.push(data);
  state.logBytes += data.length;
  while (state.logBytes > LOG_LIMIT && state.log.length > 1) state.logBytes -= state.log.shift().length;
}

function receive(model, msg, buffers) {
  const state = stateOf(model);
  if (msg.type === "ack") {
    if (msg.page !== state.page) return; // another page's keys
    state.acked = Math.max(state.acked, msg.seq);
    state.since = performance.now();
    for (const view of state.views) view.showBusy();
    return;
  }
  if (msg.type !== "output" || !buffers || !buffers.length) return;
  let data = bytesOf(buffers[0]);
  const end = msg.at + data.length;
  if (msg.replay) state.syncing = false;
  if (end <= state.have) return; // had it already
  if (msg.at > state.have) {
    if (!msg.replay) {
      // a gap: chunks were lost before this model listened; ask for everything after what we have
      if (!state.syncing) {
        state.syncing = true;
        model.send({ type: "sync", have: state.have });
      }
      return;
    }
  } else {
    data = data.subarray(state.have - msg.at);
  }
  state.have = end;
  remember(state, data);
  for (const view of state.views) view.term.write(data);
}

function makeTerminal(model, el) {
  const term = new Terminal({
    cols: model.get("cols"),
    rows: model.get("rows"),
    fontFamily: 'Menlo, "DejaVu Sans Mono", Consolas, "Liberation Mono", monospace',
    fontSize: 13,
    scrollback: 5000,
    cursorBlink: true,
    allowProposedApi: false,
    theme: { background: "#1e1e1e", foreground: "#d4d4d4" },
  });
  term.loadAddon(new WebLinksAddon());
  const screen = document.createElement("div");
  screen.className = "tunnelnb-xterm-screen";
  el.appendChild(screen);
  term.open(screen);
  el.tunnelnbTerm = term; // for tests and the curious: the xterm.js Terminal of this view
  return term;
}

function statusBar(el) {
  const bar = document.createElement("div");
  bar.className = "tunnelnb-xterm-bar";
  const status = document.createElement("span");
  status.className = "tunnelnb-xterm-status";
  const busy = document.createElement("span");
  busy.className = "tunnelnb-xterm-busy";
  const button = document.createElement("button");
  button.className = "tunnelnb-xterm-button jupyter-button";
  bar.append(status, busy, button);
  el.appendChild(bar);
  return { status, busy, button };
}

function renderLive(model, el) {
  const state = stateOf(model);
  const term = makeTerminal(model, el);
  const bar = statusBar(el);
  bar.button.textContent = "Detach";
  bar.button.title = "give the shell back to %%tunnel cells";
  const view = {
    term,
    showBusy() {
      const waiting = state.seq - state.acked;
      const late = waiting > 0 && performance.now() - state.since > BUSY_AFTER_MS;
      bar.busy.textContent = late ? `kernel busy: ${waiting} key${waiting === 1 ? "" : "s"} waiting` : "";
    },
  };
  const showStatus = () => {
    const phase = model.get("phase");
    bar.status.textContent = model.get("status");
    el.dataset.phase = phase;
    bar.button.disabled = phase === "detached" || phase === "ended";
  };
  for (const data of state.log) term.write(data);
  state.views.add(view);

  const type = (data) => {
    const phase = model.get("phase");
    if (phase === "detached" || phase === "ended") return;
    if (state.seq === state.acked) state.since = performance.now();
    state.seq += 1;
    model.send({ type: "keys", page: state.page, seq: state.seq, data });
  };
  const keys = term.onData(type);
  const binary = term.onBinary(type);
  bar.button.addEventListener("click", () => {
    bar.button.disabled = true;
    model.send({ type: "detach" });
  });
  model.on("change:status", showStatus);
  model.on("change:phase", showStatus);
  showStatus();
  const timer = setInterval(() => view.showBusy(), 250);
  return () => {
    clearInterval(timer);
    state.views.delete(view);
    model.off("change:status", showStatus);
    model.off("change:phase", showStatus);
    keys.dispose();
    binary.dispose();
    term.dispose();
  };
}

function renderReplay(model, el) {
  const term = makeTerminal(model, el);
  const bar = statusBar(el);
  bar.button.textContent = "Replay";
  bar.button.title = "play the recording again from the start";
  let timers = [];
  const stop = () => {
    for (const t of timers) clearTimeout(t);
    timers = [];
  };
  const play = () => {
    stop();
    term.reset();
    const events = model.get("events");
    const speed = model.get("speed") || 1;
    const cap = model.get("idle_time_limit") || IDLE_CAP_S;
    let clock = 0;
    let last = 0;
    bar.status.textContent = `playing ${model.get("title") || "the recording"}…`;
    for (const [at, text] of events) {
      clock += Math.min(Math.max(at - last, 0), cap);
      last = at;
      timers.push(setTimeout(() => term.write(text), (clock * 1000) / speed));
    }
    timers.push(
      setTimeout(() => {
        bar.status.textContent = `${model.get("title") || "recording"}: ${events.length} events, played`;
        el.dataset.phase = "played";
      }, (clock * 1000) / speed + 10),
    );
    el.dataset.phase = "playing";
  };
  bar.button.addEventListener("click", play);
  play();
  return () => {
    stop();
    term.dispose();
  };
}

export default {
  initialize({ model }) {
    const state = stateOf(model);
    const onMessage = (msg, buffers) => receive(model, msg, buffers);
    model.on("msg:custom", onMessage);
    if (model.get("mode") === "live") {
      state.syncing = true;
      model.send({ type: "sync", have: 0 }); // output sent before this model listened
    }
    return () => {
      model.off("msg:custom", onMessage);
      models.delete(model.get("_instance"));
    };
  },
  render({ model, el }) {
    el.classList.add("tunnelnb-xterm");
    // JupyterLab's shortcuts (Escape, Ctrl-C, arrows ...) must not take the keys meant for the device.
    el.setAttribute("data-lm-suppress-shortcuts", "true");
    el.setAttribute("data-p-suppress-shortcuts", "true");
    const cleanup = model.get("mode") === "replay" ? renderReplay(model, el) : renderLive(model, el);
    return cleanup;
  },
};
