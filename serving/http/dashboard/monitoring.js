// medgate dashboard: live model monitoring (GET /v1/models/monitoring, docs/monitoring.md).
// Per model version and site: positive rate, score histogram against the training reference (SVG),
// PSI of scores and inputs, agreement with clinicians and PPV; raised alerts on top. No build step.
"use strict";

Object.assign(STRINGS.en, {
  "tab.monitoring": "Model monitoring", "mon.alerts": "Alerts", "mon.no-alerts": "No monitoring line is crossed.",
  "mon.empty": "No model result in the window yet.", "mon.window": "Window", "mon.days": "days",
  "mon.results": "Results", "mon.positive": "Positive rate", "mon.reference": "reference",
  "mon.score-psi": "Score PSI", "mon.input-psi": "Input PSI", "mon.agreement": "Agreement", "mon.ppv": "PPV",
  "mon.verdicts": "verdicts", "mon.served": "served", "mon.no-reference": "no reference for this version",
  "mon.line": "line", "mon.scores": "Scores (share per bin)", "mon.since": "since",
  "mon.shadows": "Shadow versions on live traffic", "mon.no-shadow": "No model runs a shadow version.",
  "mon.shadow": "shadow", "mon.items": "Items compared", "mon.score-diff": "Score difference (mean, mean |d|, max |d|)",
});
Object.assign(STRINGS.vi, {
  "tab.monitoring": "Giám sát mô hình", "mon.alerts": "Cảnh báo", "mon.no-alerts": "Chưa vượt ngưỡng giám sát nào.",
  "mon.empty": "Chưa có kết quả mô hình trong khoảng thời gian này.", "mon.window": "Khoảng thời gian",
  "mon.days": "ngày", "mon.results": "Số kết quả", "mon.positive": "Tỉ lệ dương tính", "mon.reference": "tham chiếu",
  "mon.score-psi": "PSI điểm", "mon.input-psi": "PSI đầu vào", "mon.agreement": "Đồng thuận", "mon.ppv": "PPV",
  "mon.verdicts": "nhận định", "mon.served": "thực tế", "mon.no-reference": "phiên bản này chưa có tham chiếu",
  "mon.line": "ngưỡng", "mon.scores": "Điểm (tỉ lệ mỗi khoảng)", "mon.since": "từ",
  "mon.shadows": "Phiên bản chạy song song trên dữ liệu thực", "mon.no-shadow": "Không mô hình nào chạy phiên bản song song.",
  "mon.shadow": "song song", "mon.items": "Số mẫu so sánh",
  "mon.score-diff": "Chênh lệch điểm (trung bình, trung bình |d|, lớn nhất |d|)",
});

const SVG_NS = "http://www.w3.org/2000/svg";
const MONITOR_REFRESH_MS = 30000;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function startMonitoring() {
  const load = async () => {
    const r = await api("/v1/models/monitoring");
    if (r.ok) { state.monitoring = await r.json(); renderMonitoring(); }
    loadShadows();
  };
  load(); state.timer = setInterval(load, MONITOR_REFRESH_MS);
}

const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);
const num = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));

function shares(counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  return counts.map((c) => (total ? c / total : 0));
}

// Served (filled) and reference (outlined) share per score bin, the operating threshold dashed.
function scoreChart(group) {
  const W = 320, H = 120, PAD = 18, bins = group.score.counts.length, bw = (W - 2 * PAD) / bins;
  const served = shares(group.score.counts);
  const reference = group.reference ? shares(group.reference.score_counts) : null;
  const top = Math.max(0.05, ...served, ...(reference || []));
  const y = (v) => H - PAD - (H - 2 * PAD) * (v / top);
  const chart = svg("svg", { class: "mon-chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": `${t("mon.scores")}: ${group.model} ${group.version} ${group.site}` });
  chart.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, class: "axis" }));
  served.forEach((v, i) => chart.append(svg("rect", { x: PAD + i * bw + 2, y: y(v), width: bw - 4,
                                                       height: H - PAD - y(v), class: "served" })));
  if (reference) {
    reference.forEach((v, i) => chart.append(svg("rect", { x: PAD + i * bw + 1, y: y(v), width: bw - 2,
                                                            height: H - PAD - y(v), class: "reference" })));
    const x = PAD + (W - 2 * PAD) * group.reference.threshold;
    chart.append(svg("line", { x1: x, y1: PAD / 2, x2: x, y2: H - PAD, class: "threshold" }));
  }
  [0, 0.5, 1].forEach((v) => {
    const label = svg("text", { x: PAD + (W - 2 * PAD) * v, y: H - 4, "text-anchor": "middle" });
    label.textContent = String(v);
    chart.append(label);
  });
  return chart;
}

function figure(label, value, over, wide) {
  return el("div", { class: `mon-fig${over ? " over" : ""}${wide ? " wide" : ""}` }, el("span", { class: "label", text: label }),
            el("b", { text: value }));
}

function groupCard(group, lines) {
  const alerted = new Set(group.alerts);
  const fb = group.feedback;
  const card = el("article", { class: alerted.size ? "mon-card alerted" : "mon-card",
                               "data-group": `${group.model}/${group.version}/${group.site}` },
    el("header", {}, el("b", { text: `${group.model} ${group.version}` }), el("span", { text: group.site })),
    el("div", { class: "mon-figs" },
      figure(t("mon.results"), String(group.n)),
      figure(t("mon.positive"), `${pct(group.positive_rate)}${group.reference ? ` (${t("mon.reference")} ${pct(group.reference.positive_rate)})` : ""}`, false, true),
      figure(t("mon.score-psi"), num(group.score_psi), alerted.has("score_psi")),
      figure(t("mon.agreement"), fb.n ? `${pct(fb.agreement)} (${fb.n} ${t("mon.verdicts")})` : "–", alerted.has("agreement"),
             true),
      figure(t("mon.ppv"), pct(fb.ppv))));
  if (group.reference) {
    card.append(el("p", { class: "label", text: `${t("mon.scores")}: ■ ${t("mon.served")} □ ${t("mon.reference")}` }),
                scoreChart(group));
  } else {
    card.append(el("p", { class: "muted", text: t("mon.no-reference") }));
  }
  const inputs = Object.entries(group.input_psi);
  if (inputs.length) {
    card.append(el("table", { class: "mon-inputs" }, el("tbody", {}, inputs.map(([name, value]) =>
      el("tr", { class: value > lines.input_psi ? "over" : null },
        el("td", { text: `${t("mon.input-psi")} ${name}` }), el("td", { text: num(value) }))))));
  }
  return card;
}

function renderMonitoring() {
  const m = state.monitoring;
  $("#mon-window").textContent = `${t("mon.window")}: ${m.window.days} ${t("mon.days")} · ` +
    `${t("mon.score-psi")} ${t("mon.line")} ${m.lines.score_psi}, ${t("mon.input-psi")} ${t("mon.line")} ` +
    `${m.lines.input_psi}, ${t("mon.agreement")} ≥ ${m.lines.min_agreement}`;
  $("#mon-alerts").replaceChildren(...m.alerts.map((a) => el("li", { text:
    `${a.message} (${t("mon.since")} ${new Date(a.raised_at * 1000).toLocaleString()})` })));
  $("#mon-no-alerts").hidden = m.alerts.length > 0;
  $("#mon-groups").replaceChildren(...m.groups.map((g) => groupCard(g, m.lines)));
  $("#mon-empty").hidden = m.groups.length > 0;
}

// A shadow version beside the served one (GET /v1/models/shadows, serving/inference/shadow.py):
// agreement of their calls, each one's positive rate and the shadow's score differences.
async function loadShadows() {
  const r = await api("/v1/models/shadows");
  if (!r.ok) return;
  const reports = await r.json();
  $("#mon-shadows").replaceChildren(...reports.map(shadowCard));
  $("#mon-no-shadow").hidden = reports.length > 0;
}

function shadowCard(s) {
  const rate = s.positive_rate || {};
  const d = s.score_difference;
  return el("article", { class: "mon-card", "data-shadow": s.model },
    el("header", {}, el("b", { text: `${s.model} ${s.version}` }), el("span", { text: `${t("mon.shadow")} ${s.shadow_version}` })),
    el("div", { class: "mon-figs" },
      figure(t("mon.items"), String(s.items)),
      figure(t("mon.agreement"), pct(s.agreement)),
      figure(t("mon.positive"), `${pct(rate.version)} / ${pct(rate.shadow_version)}`, false, true),
      figure(t("mon.score-diff"), d ? `${num(d.mean)}, ${num(d.mean_abs)}, ${num(d.max_abs)}` : "–", false, true)));
}
