// medgate dashboard: sign-in, ward board (SSE), imaging worklist, system page. No build step.
"use strict";

const TOKEN_KEY = "medgate.token";
const state = { token: sessionStorage.getItem(TOKEN_KEY), role: null, tab: null, source: null,
                timer: null, beds: [], studies: [], system: null, alertVerdicts: {} };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.token}` };
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  if (response.status === 401) { signOut(); throw new Error("unauthorised"); }
  return response;
}

// -- sign-in ------------------------------------------------------------------------------------
async function signIn(token) {
  state.token = token;
  const response = await fetch("/v1/session", { method: "POST", headers: { Authorization: `Bearer ${token}` },
                                                credentials: "same-origin" });
  if (!response.ok) { state.token = null; sessionStorage.removeItem(TOKEN_KEY); return false; }
  const who = await response.json();
  sessionStorage.setItem(TOKEN_KEY, token);
  state.role = who.role;
  $("#who").textContent = `${who.name} (${who.role})`;
  $("#login").hidden = true; $("#tabs").hidden = false; $("#logout").hidden = false;
  document.querySelectorAll("#tabs a").forEach((a) => { a.hidden = !ALLOWED[a.dataset.tab].includes(state.role); });
  route();
  return true;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.token) fetch("/v1/session", { method: "DELETE", headers: { Authorization: `Bearer ${state.token}` } });
  state.token = null; stopUpdates();
  $("#login").hidden = false; $("#tabs").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
}

// -- navigation ---------------------------------------------------------------------------------
const CLINICAL = ["clinician", "radiologist", "nurse", "admin"];
const ALLOWED = { ward: CLINICAL, worklist: CLINICAL, system: ["engineer", "admin"],
                  monitoring: [...CLINICAL, "engineer"] };  // monitoring.js

function route() {
  if (!state.token) return;
  let tab = (location.hash || "").slice(1);
  if (!ALLOWED[tab]) tab = state.role === "engineer" ? "system" : "ward";
  state.tab = tab; stopUpdates();
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("on", a.dataset.tab === tab));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== `view-${tab}`; });
  const allowed = ALLOWED[tab].includes(state.role);
  $("#forbidden").hidden = allowed;
  if (!allowed) { $(`#view-${tab}`).hidden = true; return; }
  ({ ward: startWard, worklist: startWorklist, system: startSystem, monitoring: startMonitoring })[tab]();
}

function stopUpdates() {
  if (state.source) { state.source.close(); state.source = null; }
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  $("#live").hidden = true;
}

function setLive(key) { const live = $("#live"); live.hidden = false; live.dataset.state = key; live.textContent = t(key); }

// -- ward board ---------------------------------------------------------------------------------
const WARD_KEY = "medgate.ward";  // this screen's ward (a ward's own screen keeps it)

function wardQuery() {
  const ward = localStorage.getItem(WARD_KEY);
  return ward ? `?ward=${encodeURIComponent(ward)}` : "";
}

function renderWards(wards) {
  const select = $("#ward-filter"), chosen = localStorage.getItem(WARD_KEY) || "";
  const names = chosen && !wards.includes(chosen) ? [...wards, chosen] : wards;
  select.replaceChildren(el("option", { value: "", "data-i18n": "ward.all", text: t("ward.all") }),
                         ...names.map((w) => el("option", { value: w, text: w })));
  select.value = chosen;
}

function startWard() {
  // EventSource cannot send headers: the HttpOnly session cookie set at sign-in authenticates it.
  const source = new EventSource(`/v1/stream/ward${wardQuery()}`, { withCredentials: true });
  state.source = source;
  let failures = 0;
  source.addEventListener("wards", (event) => renderWards(JSON.parse(event.data)));
  source.addEventListener("ward", (event) => { failures = 0; setLive("live"); state.beds = JSON.parse(event.data); renderWard(); });
  source.onerror = () => {
    failures += 1; setLive("reconnecting");
    if (failures >= 3 && state.source === source) {  // no SSE through this network: poll instead
      source.close(); state.source = null; setLive("polling");
      const poll = async () => {
        const r = await api(`/v1/ward${wardQuery()}`);
        if (r.ok) { const board = await r.json(); renderWards(board.wards); state.beds = board.beds; renderWard(); }
      };
      poll(); state.timer = setInterval(poll, 5000);
    }
  };
}

function chooseWard(ward) {
  if (ward) localStorage.setItem(WARD_KEY, ward); else localStorage.removeItem(WARD_KEY);
  stopUpdates(); state.beds = []; renderWard(); startWard();
}

function sparkline(points, width = 90, height = 24) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`); svg.setAttribute("class", "spark");
  if (points.length < 2) return svg;
  const values = points.map((p) => p[1]);
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const xy = values.map((v, i) => `${(i / (values.length - 1) * width).toFixed(1)},${(height - 2 - (v - lo) / span * (height - 4)).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", xy.join(" "));
  svg.append(line);
  return svg;
}

const last = (series) => (series.length ? series[series.length - 1][1] : null);
const fmt = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

function vitalRow(key, series, value, unit) {
  return el("div", { class: "vital" }, el("span", { class: "label", text: t(key) }),
            el("span", { class: "value", text: value }), el("span", { class: "unit", text: unit }), sparkline(series));
}

function renderWard() {
  const beds = $("#beds");
  beds.replaceChildren();
  $("#ward-empty").hidden = state.beds.length > 0;
  for (const tile of state.beds) {
    const v = tile.vitals, band = tile.news2 ? tile.news2.band : null;
    const name = tile.bed ? `${tile.ward} / ${tile.bed}` : t("ward.unassigned");
    const risk = tile.deterioration && tile.deterioration.probability !== null
      ? `${Math.round(tile.deterioration.probability * 100)} %` : "–";
    const alerts = tile.alerts.length
      ? el("ul", { class: "alerts" }, tile.alerts.map((a) => el("li", {},
          (a.text || "").replace(/\s*\(Observation\/[^)]*\)/, ""), alertButtons(a))))
      : el("p", { class: "muted", text: t("no.alerts") });
    beds.append(el("article", { class: `tile band-${band || "none"}`, "data-bed": tile.bed ? `${tile.ward}/${tile.bed}` : tile.patient },
      el("header", {},
        el("span", { class: "bed", text: name }),
        el("span", { class: "news2", title: band ? t(`band.${band}`) : "" },
           `${t("news2")} `, el("b", { text: tile.news2 ? tile.news2.total : "–" }),
           band ? el("small", { text: ` ${t(`band.${band}`)}` }) : null)),
      el("p", { class: "patient", text: tile.patient.replace("Patient/", "") }),
      vitalRow("hr", v.hr, fmt(last(v.hr)), "/min"),
      vitalRow("rr", v.rr, fmt(last(v.rr)), "/min"),
      vitalRow("spo2", v.spo2, fmt(last(v.spo2)), "%"),
      vitalRow("bp", v.sys, `${fmt(last(v.sys))}/${fmt(last(v.dia))}`, "mmHg"),
      vitalRow("temp", v.temp, fmt(last(v.temp), 1), "°C"),
      el("div", { class: "risk" }, el("span", { class: "label", text: t("risk") }), el("b", { text: risk })),
      el("div", { class: "alerts-box" }, el("span", { class: "label", text: t("alerts") }), alerts)));
  }
}

// -- worklist -----------------------------------------------------------------------------------
function startWorklist() {
  const load = async () => { const r = await api("/v1/worklist"); if (r.ok) { state.studies = (await r.json()).studies; renderWorklist(); } };
  load(); state.timer = setInterval(load, 4000);
}

function resultCell(result, study) {
  const reviewer = FINDING_REVIEWERS.includes(state.role);
  // an input outside the model's training distribution gets no call (worklist.py ``call``: "outside")
  const findings = result.findings.map((f) => el("span", { class: `finding ${f.call === "outside" ? "ood" : f.positive ? "pos" : "neg"}` },
    f.call === "outside" ? t("wl.outside") : `p=${f.probability.toFixed(2)} ${t(f.positive ? "wl.positive" : "wl.negative")}`,
    verdictBadge(study, f.target),
    reviewer ? el("button", { class: "fb", type: "button", text: t("fb.review"), "data-finding": f.n,
                              onclick: () => openReview(study, result, f) }) : null));
  const links = [...result.sr.map((href) => el("a", { href, text: t("wl.sr"), download: "" })),
                 el("a", { href: result.report, target: "_blank", text: t("wl.report") })];
  const missed = reviewer ? el("button", { class: "fb", type: "button", text: t("fb.missed"),
                                           onclick: () => openReview(study, result, null) }) : null;
  return el("div", { class: "result" }, el("b", { text: `${result.model}@${result.version}` }), " ", findings, " ",
            links, missed);
}

// -- clinician feedback: verdicts on findings (review dialog), helpful / not on alerts ------------
const FINDING_REVIEWERS = ["clinician", "radiologist"];
const ALERT_REVIEWERS = ["clinician", "nurse"];
const review = { body: null, point: null };

function verdictBadge(study, target) {
  const mine = (study.feedback || []).filter((v) => v.target === target);
  if (!mine.length) return null;
  const v = mine[mine.length - 1];
  return el("span", { class: "verdict", text: `${t(`fb.${v.verdict}`)}${v.reason ? ` (${t(`fb.${v.reason}`)})` : ""}` });
}

function openReview(study, result, finding) {
  review.body = { study_uid: study.study_uid, model: result.model, version: result.version,
                  finding: finding ? finding.n : null };
  review.point = null;
  $("#review-title").textContent = `${result.model}@${result.version} · ${finding ? `#${finding.n}` : t("fb.missed")}`;
  $("#review-verdict").value = finding ? "agree" : "disagree";
  $("#review-reason").value = finding ? "false-positive" : "missed-finding";
  $("#review-comment").value = ""; $("#review-error").textContent = "";
  const image = $("#review-image img");
  image.src = result.overlays[0] || ""; $("#review-image").hidden = !result.overlays.length;
  $("#review-image .mark").hidden = true;
  $("#review").showModal();
}

function markPoint(event) {
  const image = $("#review-image img");
  review.point = [event.offsetX / image.clientWidth, event.offsetY / image.clientHeight].map((v) => Math.min(1, Math.max(0, +v.toFixed(4))));
  const mark = $("#review-image .mark");
  mark.style.left = `${event.offsetX}px`; mark.style.top = `${event.offsetY}px`; mark.hidden = false;
  $("#review-verdict").value = "disagree";
}

async function sendReview(event) {
  if (!event.submitter || event.submitter.value !== "send") return;
  event.preventDefault();
  const verdict = $("#review-verdict").value;
  const body = { ...review.body, verdict, comment: $("#review-comment").value || null };
  if (verdict === "disagree") {
    body.reason = $("#review-reason").value;
    if (review.point) body.point_fraction = review.point;
  }
  const r = await api("/v1/worklist/feedback", { method: "POST", body: JSON.stringify(body),
                                                  headers: { "Content-Type": "application/json" } });
  if (!r.ok) { $("#review-error").textContent = (await r.json()).error; return; }
  $("#review").close();
  const w = await api("/v1/worklist");
  if (w.ok) { state.studies = (await w.json()).studies; renderWorklist(); }
}

function alertButtons(alert) {
  if (!ALERT_REVIEWERS.includes(state.role)) return null;
  if (state.alertVerdicts[alert.id]) return el("span", { class: "verdict", text: t("fb.thanks") });
  const send = async (verdict) => {
    const r = await api(`/v1/ward/alerts/${encodeURIComponent(alert.id)}/feedback`, {
      method: "POST", body: JSON.stringify({ verdict }), headers: { "Content-Type": "application/json" } });
    if (r.ok) { state.alertVerdicts[alert.id] = verdict; renderWard(); }
  };
  return [el("button", { class: "fb", type: "button", text: t("fb.helpful"), onclick: () => send("helpful") }),
          el("button", { class: "fb", type: "button", text: t("fb.not-helpful"), onclick: () => send("not-helpful") })];
}

// The study a link names (a CDS Hooks card's "/?study=<uid>#worklist"): its row is marked.
const linkedStudy = () => new URLSearchParams(location.search).get("study");

function renderWorklist() {
  const body = $("#studies");
  body.replaceChildren();
  $("#worklist-empty").hidden = state.studies.length > 0;
  for (const s of state.studies) {
    const overlays = s.results.flatMap((r) => r.overlays);
    body.append(el("tr", { "data-study": s.study_uid, class: s.study_uid === linkedStudy() ? "linked" : null },
      el("td", { text: new Date(s.received_at * 1000).toLocaleString(LANG === "vi" ? "vi-VN" : "en-GB") }),
      el("td", { text: s.patient_id || "–" }),
      el("td", { text: s.modality || "–" }),
      el("td", {}, el("span", { class: `status st-${s.status}`, text: t(`status.${s.status}`) }),
        s.status === "refused" && s.detail ? el("div", { class: "reason", text: s.detail }) : null),
      el("td", {}, s.results.map((r) => resultCell(r, s))),
      el("td", {}, overlays.map((src) => el("img", { class: "overlay", src, alt: "overlay", loading: "lazy",
        onclick: () => { $("#zoom img").src = src; $("#zoom").showModal(); } })))));
  }
}

// -- system -------------------------------------------------------------------------------------
function startSystem() {
  const load = async () => { const r = await api("/v1/system"); if (r.ok) { state.system = await r.json(); renderSystem(); } };
  load(); state.timer = setInterval(load, 5000);
}

function pairs(target, items) {
  $(target).replaceChildren(...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

function renderSystem() {
  const s = state.system;
  $("#models").replaceChildren(...s.models.map((m) => el("tr", {},
    el("td", { text: m.name }), el("td", { text: m.version || "–" }), el("td", { text: m.engine || "–" }),
    el("td", { text: m.device || "–" }), el("td", { text: m.status }))));
  pairs("#components", [...Object.entries(s.components), [t("sys.heartbeat"), s.heartbeat_age_s ?? "–"]]);
  const outbox = Object.entries(s.outbox).map(([k, v]) => `${k}: ${v}`).join(", ") || "0";
  pairs("#delivery", [[t("sys.outbox"), outbox],
                      [t("sys.dead"), `${s.dead_letters.total} (${t("sys.parked")}: ${s.dead_letters.parked})`],
                      [t("sys.audit"), s.audit_rows]]);
}

// -- start --------------------------------------------------------------------------------------
function rerender() {
  applyLanguage();
  if (state.tab === "ward") renderWard();
  if (state.tab === "worklist") renderWorklist();
  if (state.tab === "system" && state.system) renderSystem();
  if (state.tab === "monitoring" && state.monitoring) renderMonitoring();
  if (!$("#live").hidden) setLive($("#live").dataset.state);
}

document.addEventListener("DOMContentLoaded", () => {
  applyLanguage();
  document.querySelectorAll("button[data-lang]").forEach((b) => b.addEventListener("click", () => { applyLanguage(b.dataset.lang); rerender(); }));
  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#login-error").textContent = "";
    if (!(await signIn($("#token").value.trim()))) $("#login-error").textContent = t("login.bad");
    $("#token").value = "";
  });
  $("#logout").addEventListener("click", signOut);
  $("#review-form").addEventListener("submit", sendReview);
  $("#review-image img").addEventListener("click", markPoint);
  $("#ward-filter").addEventListener("change", (event) => chooseWard(event.target.value));
  window.addEventListener("hashchange", route);
  if (state.token) signIn(state.token);
});
