// Keys and answer clicks of the annotation app (human_eval/app.py mounts this as the `k3_input` component).
//
// Why it exists: Streamlit's own shortcuts and buttons reach the server as "button X was pressed", and the server
// runs the callback it registered last for X, which may already be the next pair's. So a key pressed while pair k
// was on screen could be stored as an answer to pair k+1, which the annotator had not seen. Here every answer
// carries the pair that was whole on screen when the key went down (or the button was clicked), and the server
// refuses it, saying so, when that pair is no longer the current one.
//
// "Whole on screen": the pair's container (.st-key-pair_N) is in the page with both of its images decoded. Until
// then this module's CSS keeps every pair container invisible and unclickable, and it makes one visible (a style
// rule naming that pair) only once it is whole: nothing of a pair can be seen, pressed or clicked before that. The
// app draws no pair and no button with a key before this module has told the server it is running ("ready"), so a
// key pressed the moment something appears is always handled here, never lost. On a new pair the page scrolls to
// the top and the images are sized so that the answer buttons fit the window.
//
// Answers go to the server as the list of those it has not acknowledged yet (data.ack), each with a sequence
// number: two quick presses that Streamlit merges into one rerun both arrive, and the server counts each once; what
// is not acknowledged is sent again. The page's other keys (Enter, B, H) travel the same way, so that a key pressed
// as a page first appears is never lost. An image whose file Streamlit deleted too early (see `repair`) is
// fetched again.

const STATE = "__k3evalPairInput";
const MIN_IMAGE_PX = 120;
const MAX_PENDING = 50;
const REPAIR_EVERY_MS = 400;
const MAX_REPAIRS = 50;
const RESEND_MS = 1500;
// The page's other keys and the buttons they press (app.py: CONTINUE_KEY, BACK_KEY, HELP_KEY).
const NAV = {ENTER: [["start", ".st-key-start"], ["continue", ".st-key-continue"]], B: [["back", ".st-key-back"]],
  H: [["help", ".st-key-guideline"]]};

function pairBox(pos) {
  return pos === null ? null : document.querySelector(`.st-key-pair_${pos}`);
}

function images(box) {
  return [...box.querySelectorAll(".st-key-left_image img, .st-key-right_image img")];
}

function whole(box) {
  const imgs = images(box);
  return imgs.length === 2 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}

function broken(box) {
  return images(box).filter((i) => i.complete && i.naturalWidth === 0);
}

function repair(s, failed) {
  // Streamlit deletes the files of a run's images when the next run was cut short by yet another rerun (it collects
  // "orphaned" files even then), so a burst of keys can leave the browser asking for an image that is gone. Ask for
  // a rerun, which registers the file again under the same address, then fetch it again under a fresh one.
  const now = performance.now();
  if (now - s.repairAt < REPAIR_EVERY_MS || s.repairs >= MAX_REPAIRS) return;
  s.repairAt = now;
  s.repairs += 1;
  const n = s.repairs;
  try {
    s.send("repair", n);
  } catch (err) {
    console.error("k3eval: repair not sent", err);
  }
  setTimeout(() => failed.forEach((img) => {
    const url = new URL(img.src);
    url.searchParams.set("k3retry", String(n));
    img.src = url.toString();
  }), REPAIR_EVERY_MS / 2);
}

function scrollToTop() {
  for (const el of [document.querySelector("[data-testid='stMain']"),
    document.querySelector("[data-testid='stAppViewContainer']"), document.scrollingElement]) {
    if (el && el.scrollTop) el.scrollTop = 0;
  }
  window.scrollTo(0, 0);
}

function fit(s) {
  // Images as large as the window allows with the answer buttons still in it (never below MIN_IMAGE_PX).
  const box = pairBox(s.shown);
  const answers = box && box.querySelector(".st-key-answers");
  if (!answers) return;
  const imgs = images(box);
  if (imgs.length !== 2) return;
  const height = Math.max(...imgs.map((i) => i.getBoundingClientRect().height));
  const overflow = answers.getBoundingClientRect().bottom + 8 - window.innerHeight;
  const target = Math.max(MIN_IMAGE_PX, Math.floor(height - overflow));
  document.documentElement.style.setProperty("--k3-image-height", `${target}px`);
}

function reveal(s) {
  s.repairs = 0;
  s.shown = s.want;
  s.shownAt = performance.now();
  scrollToTop();
  fit(s);
  s.style.textContent = `.st-key-pair_${s.shown} { opacity: 1 !important; pointer-events: auto !important; }`;
  document.body.dataset.k3evalPair = String(s.shown);
}

function hideAll(s) {
  cancelAnimationFrame(s.raf);
  s.shown = null;
  s.style.textContent = "";
  delete document.body.dataset.k3evalPair;
}

function watch(s) {
  // Every frame until the wanted pair is whole: then show it (once per pair); meanwhile repair images that failed.
  cancelAnimationFrame(s.raf);
  const step = () => {
    const box = pairBox(s.want);
    if (box && whole(box)) {
      if (s.shown !== s.want) reveal(s);
      return;
    }
    const failed = box ? broken(box) : [];
    if (failed.length) repair(s, failed);
    s.raf = requestAnimationFrame(step);
  };
  step();
}

function onScreen(s) {
  const box = pairBox(s.shown);
  return box && whole(box) ? s.shown : null;
}

function send(s) {
  s.sentAt = performance.now();
  try {
    s.send("input", s.pending.slice());
  } catch (err) {
    console.error("k3eval: input not sent", err);
  }
  // Until the server acknowledges them (data.ack), the events are sent again now and then: a rerun request that
  // Streamlit drops must not lose a key.
  clearTimeout(s.resend);
  s.resend = setTimeout(() => {
    if (s.pending.length) send(s);
  }, RESEND_MS);
}

function push(s, ev) {
  s.seq += 1;
  s.pending.push({seq: s.seq, ...ev});
  if (s.pending.length > MAX_PENDING) s.pending = s.pending.slice(-MAX_PENDING);
  send(s);
}

function submit(s, question, answer, via, clicked) {
  const pair = onScreen(s);
  const ok = pair !== null && (clicked === undefined || clicked === pair);
  push(s, {kind: "answer", pair: ok ? pair : null, question, answer, via,
    ms: ok ? Math.round(performance.now() - s.shownAt) : null});
}

function onKey(s, e) {
  if (e.ctrlKey || e.metaKey || e.altKey || typeof e.key !== "string") return;
  const t = e.target;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  const key = e.key.toUpperCase();
  const answer = s.active ? s.keys[key] : undefined;
  if (!answer && !NAV[key]) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  if (e.repeat) return; // a key held down is one press, not many
  if (answer) {
    submit(s, answer[0], answer[1], "key");
    return;
  }
  // A page key acts on its button only while that button is on the page (which one tells the server what to do).
  const found = NAV[key].find(([, selector]) => document.querySelector(selector));
  if (found) push(s, {kind: "nav", action: found[0], pair: onScreen(s)});
}

function onClick(s, e) {
  const el = e.target instanceof Element ? e.target.closest("[class*='st-key-ans_']") : null;
  const m = el && /(?:^|\s)st-key-ans_(\d+)_([a-z]+)_([a-z_]+)(?:\s|$)/.exec(el.className);
  if (!m) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  if (s.active) submit(s, m[2], m[3], "click", Number(m[1]));
}

// Opacity, not visibility: no child element can undo it.
const HIDE_CSS = "[class*='st-key-pair_'] { opacity: 0; pointer-events: none; transition: none !important; }";

function state() {
  let s = window[STATE];
  if (!s) {
    s = {seq: 0, pending: [], session: null, want: null, shown: null, shownAt: 0, keys: {}, active: false,
      send: null, raf: 0, repairs: 0, repairAt: 0, resend: 0, sentAt: 0, readyAt: -1e9,
      style: document.createElement("style")};
    window[STATE] = s;
    const hide = document.createElement("style");
    hide.textContent = HIDE_CSS;
    document.head.appendChild(hide);
    document.head.appendChild(s.style);
    // Capture phase on window: before Streamlit's own listeners (on document and below) see the event.
    window.addEventListener("keydown", (e) => onKey(s, e), true);
    window.addEventListener("click", (e) => onClick(s, e), true);
    window.addEventListener("resize", () => fit(s));
  }
  return s;
}

export default function (component) {
  const s = state();
  const data = component.data || {};
  s.send = component.setTriggerValue;
  if (data.session !== s.session) {
    // A new server session (a restart): what the old one never acknowledged is gone with it.
    s.session = data.session;
    s.pending = [];
  }
  s.pending = s.pending.filter((ev) => ev.seq > (data.ack || 0));
  if (!data.ready && performance.now() - s.readyAt > RESEND_MS) {
    s.readyAt = performance.now(); // said again after a while if the server has not heard it
    try {
      s.send("ready", true);
    } catch (err) {
      console.error("k3eval: ready not sent", err);
    }
  }
  s.keys = data.keys || {};
  s.active = Boolean(data.active);
  s.want = data.pair ?? null;
  if (s.want === null) {
    hideAll(s);
  } else {
    watch(s); // also for the pair already shown: Streamlit may have rebuilt its elements
  }
}
