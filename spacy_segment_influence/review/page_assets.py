"""The review page's stylesheet and script, inlined into every page (no network)."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1150px; padding: 0 1em 40vh; color: #222; }
#bar { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #ccc; padding: .4em 0; }
#bar h1 { font-size: 1.15em; margin: .2em 0; } #warning { color: #b42318; font-weight: bold; }
.controls { display: flex; flex-wrap: wrap; gap: .4em 1em; align-items: center; font-size: .9em; }
#legend { font-size: .9em; margin: .8em 0; } #legend dd { margin: 0; }
#legend dl { display: grid; grid-template-columns: 9em 1fr; gap: .15em 1em; }
#summary { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
#summary td, #summary th { border: 1px solid #ddd; padding: .15em .5em; text-align: right; }
#summary td { cursor: pointer; } #summary td:hover { background: #eef; }
kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .3em; font-size: .85em; background: #f6f6f6; }
.kind { font-family: monospace; background: #eee; border-radius: 3px; padding: 0 .3em; }
.candidate { border: 1px solid #ccc; border-left: 6px solid #ccc; border-radius: 6px; padding: .3em 1em; margin: .8em 0;
  content-visibility: auto; contain-intrinsic-size: auto 200px; scroll-margin-top: 8em; }
.candidate.current { outline: 3px solid #2463eb; } .decision { float: right; font-size: .9em; }
.candidate[data-answer=accept] { border-left-color: #b42318; }
.candidate[data-answer=reject] { border-left-color: #1a7f37; }
.candidate[data-answer=ignore] { border-left-color: #999; }
.candidate[data-answer=accept] .decision::after { content: "wrong (accepted)"; color: #b42318; }
.candidate[data-answer=reject] .decision::after { content: "right (rejected)"; color: #1a7f37; }
.candidate[data-answer=ignore] .decision::after { content: "skipped"; color: #666; }
.candidate h2 { font-size: 1em; font-weight: normal; margin: .3em 0; } .rank { font-weight: bold; }
.meta { color: #666; font-size: .85em; margin: .2em 0; } .influenced { font-size: .85em; }
.row { display: flex; align-items: baseline; gap: 1em; line-height: 2.4; }
.which { width: 6.5em; flex: none; color: #666; font-size: .85em; }
mark.ent { padding: .2em .35em; border-radius: .35em; color: inherit; }
.lbl { font-size: .65em; font-weight: bold; margin-left: .4em; vertical-align: middle; }
.d { text-decoration: underline wavy #d00; text-underline-offset: .25em; }
.r { outline: 2px dashed #555; outline-offset: 1px; } .answers button { margin-right: .5em; }
.supports { color: #1a7f37; } .opposes { color: #b42318; }
"""

SCRIPT = """
(() => {
const $ = (id) => document.getElementById(id);
const records = JSON.parse($("records").textContent);
const cards = Array.from(document.querySelectorAll("section.candidate"));
const STORE = "segment-influence-review", KEYS = {a: "accept", r: "reject", s: "ignore", " ": "ignore"};
const keys = records.map((r) => JSON.stringify([r.meta.doc_id, r.meta.doc_index, r.spans[0].token_start,
  r.spans[0].token_end, r.text, (r.meta.gold_spans || []).map((s) => [s.token_start, s.token_end, s.label])]));
let saved = {}, current = 0;
try { saved = JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (e) { $("warning").hidden = false; }
const answer = (i) => saved[keys[i]];
function save() {
  try { localStorage.setItem(STORE, JSON.stringify(saved)); } catch (e) { $("warning").hidden = false; }
}
function progress() {
  const n = {accept: 0, reject: 0, ignore: 0};
  cards.forEach((card, i) => { card.dataset.answer = answer(i) || ""; if (answer(i) in n) n[answer(i)]++; });
  for (const a in n) $("n-" + a).textContent = n[a];
  $("done").textContent = $("progress").value = n.accept + n.reject + n.ignore;
}
function matches(i) {
  const m = records[i].meta, kind = $("f-kind").value, label = $("f-label").value, a = $("f-answer").value;
  return (!kind || m.kind === kind) && (!label || m.label === label || m.suggested_label === label)
    && (!a || (answer(i) || "none") === a);
}
function filter() {
  cards.forEach((card, i) => { card.hidden = !matches(i); });
  $("shown").textContent = cards.filter((card) => !card.hidden).length;
  if (cards[current] && cards[current].hidden) go(step(current, 1) ?? step(current, -1), false);
}
function step(from, direction, undecided) {
  for (let i = from + direction; i >= 0 && i < cards.length; i += direction)
    if (!cards[i].hidden && !(undecided && answer(i))) return i;
  return null;
}
function go(i, scroll = true) {
  if (i === null || i === undefined) return;
  if (cards[current]) cards[current].classList.remove("current");
  current = i;
  cards[i].classList.add("current"); cards[i].focus({preventScroll: true});
  if (scroll) cards[i].scrollIntoView({block: "nearest"});
}
function decide(a) {
  if (!cards[current] || cards[current].hidden) return;
  if (a) saved[keys[current]] = a; else delete saved[keys[current]];
  save();
  const next = a ? step(current, 1) : null;
  progress(); filter();
  if (next !== null && !cards[next].hidden) go(next);
}
function download() {
  const lines = records.flatMap((r, i) => answer(i) ? [JSON.stringify({...r, answer: answer(i)}) + "\\n"] : []);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob(lines, {type: "application/x-ndjson"}));
  link.download = document.body.dataset.export;
  document.body.appendChild(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName)) return;
  if (e.key in KEYS) decide(KEYS[e.key]);
  else if (e.key === "u") decide(null);
  else if (e.key === "j" || e.key === "ArrowDown") go(step(current, 1));
  else if (e.key === "k" || e.key === "ArrowUp") go(step(current, -1));
  else if (e.key === "n") go(step(current, 1, true));
  else return;
  e.preventDefault();
});
$("cards").addEventListener("click", (e) => {
  const card = e.target.closest("section.candidate"), button = e.target.closest("button[data-answer]");
  if (card) go(Number(card.dataset.i), false);
  if (card && button) decide(button.dataset.answer);
});
$("summary").addEventListener("click", (e) => {
  const cell = e.target.closest("td[data-kind]");
  if (cell) { $("f-kind").value = cell.dataset.kind; $("f-label").value = cell.dataset.label; filter(); }
});
["f-kind", "f-label", "f-answer"].forEach((id) => $(id).addEventListener("change", () => { filter(); $(id).blur(); }));
$("next").addEventListener("click", () => go(step(current, 1, true) ?? step(-1, 1, true)));
$("export").addEventListener("click", () => { download(); go(current, false); });
$("clear").addEventListener("click", () => {
  if (confirm("Forget the decisions on this page?")) {
    keys.forEach((k) => delete saved[k]); save(); progress(); filter();
  }
  go(current, false);
});
progress();
filter();
const first = step(-1, 1, true);
go(first ?? step(-1, 1), first !== null && first > 0);
})();
"""
