// Answer keys and answer clicks of the annotation app (human_eval/app.py mounts this as the `k3_input` component).
//
// Why it exists: Streamlit's own shortcuts and buttons reach the server as "button X was pressed", and the server
// runs the callback it registered last for X, which may already be the next pair's. So a key pressed while pair k
// was on screen could be stored as an answer to pair k+1, which the annotator had not seen. Here every answer
// carries the pair that was whole on screen when the key went down (or the button was clicked), and the server
// refuses it, saying so, when that pair is no longer the current one.
//
// "Whole on screen": the pair's container (.st-key-pair_N) is in the page with both of its images decoded. Until
// then app.py's CSS keeps the container invisible, and this module makes it visible (a style rule naming that one
// pair) only once it is whole: nothing of a pair can be seen, pressed or clicked before that, and a key pressed the
// moment it appears is already handled here (never lost). On a new pair the page scrolls to the top and the images
// are sized so that the answer buttons fit the window.
//
// Answers go to the server as the list of those it has not acknowledged yet (data.ack), each with a sequence
// number: two quick presses that Streamlit merges into one rerun both arrive, and the server counts each once.

const STATE = "__k3evalPairInput";
const MIN_IMAGE_PX = 120;
const MAX_PENDING = 50;

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

function settled(box) {
  // Decoded, or failed for good (shown as broken; `whole` stays false, so keys on it are refused).
  const imgs = images(box);
  return imgs.length === 2 && imgs.every((i) => i.complete);
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
  cancelAnimationFrame(s.raf);
  const step = () => {
    const box = pairBox(s.want);
    if (box && settled(box)) {
      reveal(s);
    } else {
      s.raf = requestAnimationFrame(step);
    }
  };
  step();
}

function onScreen(s) {
  const box = pairBox(s.shown);
  return box && whole(box) ? s.shown : null;
}

function submit(s, question, answer, via, clicked) {
  const pair = onScreen(s);
  const ok = pair !== null && (clicked === undefined || clicked === pair);
  s.seq += 1;
  s.pending.push({seq: s.seq, pair: ok ? pair : null, question, answer, via,
    ms: ok ? Math.round(performance.now() - s.shownAt) : null});
  if (s.pending.length > MAX_PENDING) s.pending = s.pending.slice(-MAX_PENDING);
  try {
    s.send("input", s.pending.slice());
  } catch (err) {
    console.error("k3eval: answer not sent", err);
  }
}

function onKey(s, e) {
  if (!s.active || e.ctrlKey || e.metaKey || e.altKey || typeof e.key !== "string") return;
  const t = e.target;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  const target = s.keys[e.key.toUpperCase()];
  if (!target) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  if (e.repeat) return; // a key held down is one press, not many
  submit(s, target[0], target[1], "key");
}

function onClick(s, e) {
  const el = e.target instanceof Element ? e.target.closest("[class*='st-key-ans_']") : null;
  const m = el && /(?:^|\s)st-key-ans_(\d+)_([a-z]+)_([a-z_]+)(?:\s|$)/.exec(el.className);
  if (!m) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  if (s.active) submit(s, m[2], m[3], "click", Number(m[1]));
}

function state() {
  let s = window[STATE];
  if (!s) {
    s = {seq: 0, pending: [], session: null, want: null, shown: null, shownAt: 0, keys: {}, active: false,
      send: null, raf: 0, style: document.createElement("style")};
    window[STATE] = s;
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
  s.keys = data.keys || {};
  s.active = Boolean(data.active);
  s.want = data.pair ?? null;
  if (s.want === null) {
    hideAll(s);
  } else if (s.want !== s.shown || !pairBox(s.shown)) {
    watch(s);
  }
}
