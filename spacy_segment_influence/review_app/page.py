"""The review app's one page: a card at a time, answered from the keyboard. Text from the
corpus goes into the page through textContent only, never as markup."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>segment-influence review</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; color: #222; }
#sentence { font-size: 1.3rem; padding: .8rem; background: #f6f6f6; border-radius: 6px; }
.tok.region { background: #fff3b0; }
.tok.fix { outline: 2px solid #06c; }
mark.ent { background: #dde8ff; padding: 0 .15rem; border-radius: 3px; }
mark.ent sup, mark.sug sup { font-size: .65rem; font-weight: bold; margin-left: .15rem; }
mark.sug { background: #e3f6e3; padding: 0 .15rem; border-radius: 3px; }
.keys kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .3rem; background: #fafafa; }
.muted { color: #777; } .armed { color: #b00; font-weight: bold; }
#error { color: #b00; } ul { margin: .2rem 0; }
</style></head><body>
<h1>Review: is this annotation wrong?</h1>
<p id="progress" class="muted"></p>
<div id="card" hidden>
  <p><span id="kind"></span> &middot; current label <b id="label"></b>, the model suggests
     <b id="suggested"></b> &middot; p(current labels) = <span id="probability"></span>
     &middot; static rank <span id="rank"></span></p>
  <div id="sentence"></div>
  <p class="muted">Model's suggestion: <span id="suggestion"></span></p>
  <div id="fixer" hidden><p><b>Fix:</b> <span id="fixlabels"></span>
     &mdash; <kbd>&larr;</kbd>/<kbd>&rarr;</kbd> move the start, with <kbd>Shift</kbd> the end,
     <kbd>Enter</kbd> save, <kbd>Esc</kbd> cancel. Chosen: <b id="fixchosen"></b></p></div>
  <p id="grouping"></p><ul id="group"></ul>
  <h3>Why</h3>
  <p>Training spans supporting its current labels:</p><ul id="supporters"></ul>
  <p>Training spans opposing them:</p><ul id="opposers"></ul>
  <p id="influenced-title" hidden>Held-out predictions it drives:</p><ul id="influenced"></ul>
</div>
<p id="done" hidden>Every candidate is decided. Write the corrected corpus with
   <code>segment-influence apply-decisions</code>.</p>
<p id="error"></p>
<p class="keys"><kbd>a</kbd> accept (the label is wrong, take the suggestion) &middot; <kbd>x</kbd> reject
  (the label is right) &middot; <kbd>f</kbd> fix (choose label or boundaries) &middot; <kbd>space</kbd> skip
  &middot; <kbd>g</kbd> apply the next answer to all spans like this &middot; <kbd>u</kbd> undo
  &middot; <a href="/api/decisions.jsonl">decisions (JSONL)</a></p>
<script>
"use strict";
let card = null, fix = null, group = false, busy = false;
const $ = id => document.getElementById(id);
function item(list, parts) {
  const li = document.createElement("li");
  for (const [text, bold] of parts) {
    const el = document.createElement(bold ? "b" : "span"); el.textContent = text; li.append(el, " ");
  }
  $(list).append(li);
}
function spans(entities, tag) {
  const frag = document.createDocumentFragment(); let i = 0;
  const words = card.tokens;
  for (const [s, e, label] of [...entities].sort((a, b) => a[0] - b[0])) {
    for (; i < s; i++) frag.append(words[i][0] + (words[i][1] ? " " : ""));
    const m = document.createElement("mark"); m.className = tag;
    m.textContent = words.slice(s, e).map(w => w[0]).join(" ");
    const sup = document.createElement("sup"); sup.textContent = label; m.append(sup);
    frag.append(m, " "); i = e;
  }
  for (; i < words.length; i++) frag.append(words[i][0] + (words[i][1] ? " " : ""));
  return frag;
}
function sentence() {
  const box = $("sentence"); box.textContent = "";
  const gold = new Map(card.gold.map(([s, e, l]) => [s, [e, l]]));
  for (let i = 0; i < card.tokens.length;) {
    const tok = document.createElement("span"); tok.className = "tok";
    const end = gold.has(i) ? gold.get(i)[0] : i + 1;
    tok.textContent = card.tokens.slice(i, end).map(w => w[0]).join(" ");
    if (gold.has(i)) { const m = document.createElement("mark"); m.className = "ent";
      m.textContent = tok.textContent; const sup = document.createElement("sup");
      sup.textContent = gold.get(i)[1]; m.append(sup); tok.textContent = ""; tok.append(m); }
    if (i < card.region[1] && end > card.region[0]) tok.classList.add("region");
    if (fix && i < fix.end && end > fix.start) tok.classList.add("fix");
    box.append(tok, " "); i = end;
  }
}
function render(next) {
  card = next; fix = null; group = false; busy = false;
  const p = card.progress;
  $("progress").textContent = `${p.decided} of ${p.total} decided: ${p.accept} wrong, ` +
    `${p.reject} right, ${p.ignore} skipped`;
  $("card").hidden = card.done; $("done").hidden = !card.done;
  if (card.done) return;
  $("kind").textContent = card.kind.replace("_", " "); $("label").textContent = card.label;
  $("suggested").textContent = card.suggested_label; $("rank").textContent = card.static_rank;
  const prob = card.why.probability;
  $("probability").textContent = prob === undefined ? "?" : prob.toFixed(3);
  sentence(); $("suggestion").textContent = ""; $("suggestion").append(spans(card.suggested, "sug"));
  for (const list of ["supporters", "opposers", "influenced", "group"]) $(list).textContent = "";
  const labelled = s => [[s.left], [s.text + " (" + s.label + ")", 1], [s.right]];
  for (const s of card.why.supporters || []) item("supporters", labelled(s));
  for (const s of card.why.opposers || []) item("opposers", labelled(s));
  $("influenced-title").hidden = !card.influenced.length;
  for (const s of card.influenced) item("influenced", labelled(s));
  for (const s of card.group.examples)
    item("group", [[s.left], [s.text, 1], [`${s.right}  (model: ${s.suggested_label})`]]);
  showGroup(); $("fixer").hidden = true;
}
function showGroup() {
  const n = card.group.count;
  $("grouping").className = group ? "armed" : "muted";
  $("grouping").textContent = !n ? "No other undecided span like this." : group
    ? `The next answer applies to this span and the ${n} more like it (g to cancel).`
    : `${n} more spans like this (same string, same label); g applies the next answer to all of them.`;
}
function showFix() {
  $("fixer").hidden = false; $("fixlabels").textContent = "";
  ["O", ...card.labels].forEach((l, i) => {
    const k = document.createElement("kbd"); k.textContent = String(i); $("fixlabels").append(k, " " + l + "  ");
  });
  $("fixchosen").textContent = `${fix.label || "(pick a label)"} on "` +
    card.tokens.slice(fix.start, fix.end).map(w => w[0]).join(" ") + '"';
  sentence();
}
async function call(url, body) {
  busy = true; $("error").textContent = "";
  const response = await fetch(url, body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (response.status === 409) { $("error").textContent = data.detail; return call("/api/card"); }
  if (!response.ok) { busy = false; $("error").textContent = data.detail || response.statusText; return; }
  render(data);
}
function answer(kind, extra) {
  call("/api/answer", {candidate: card.id, answer: kind, group, ...extra});
}
function fixKey(e) {
  const shift = e.shiftKey ? "end" : "start", n = card.tokens.length;
  if (e.key === "Escape") { fix = null; $("fixer").hidden = true; sentence(); return; }
  if (e.key === "Enter" && fix.label) return answer("accept", fix.label === "O" ? {label: "O"} :
    {label: fix.label, start: fix.start, end: fix.end});
  if (/^[0-9]$/.test(e.key) && +e.key <= card.labels.length) fix.label = ["O", ...card.labels][+e.key];
  if (e.key === "ArrowLeft") fix[shift] = Math.max(shift === "end" ? fix.start + 1 : 0, fix[shift] - 1);
  if (e.key === "ArrowRight") fix[shift] = Math.min(shift === "start" ? fix.end - 1 : n, fix[shift] + 1);
  showFix();
}
document.addEventListener("keydown", e => {
  if (!card || card.done && e.key !== "u" || busy || e.ctrlKey || e.metaKey || e.altKey) return;
  if (fix) { e.preventDefault(); return fixKey(e); }
  const key = e.key.toLowerCase();
  if (key === "a") answer("accept");
  else if (key === "x") answer("reject");
  else if (key === " ") { e.preventDefault(); answer("ignore"); }
  else if (key === "g" && card.group.count) { group = !group; showGroup(); }
  else if (key === "f") {
    const main = card.gold[0] || card.suggested[0] || [card.region[0], card.region[1], ""];
    fix = {start: main[0], end: main[1], label: null}; showFix();
  }
  else if ((key === "u" || key === "backspace") && card.last_action !== null)
    call("/api/undo", {action: card.last_action});
});
call("/api/card");
</script></body></html>
"""
