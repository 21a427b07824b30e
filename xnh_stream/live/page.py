"""The live page's HTML and script (served by :class:`xnh_stream.live.server.LivePage`)."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}} - live</title>
<style>
 body{font:14px/1.35 system-ui,sans-serif;margin:12px;background:#111;color:#ddd}
 h1{font-size:18px;margin:0 0 6px} h2{font-size:14px;margin:10px 0 4px;color:#9cf}
 .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:10px}
 .card{background:#1c1c1c;border:1px solid #333;border-radius:6px;padding:8px}
 img{image-rendering:pixelated;width:100%;background:#000}
 .bar{background:#333;height:12px;border-radius:3px;overflow:hidden;margin:2px 0 6px}
 .bar>div{background:#4a9;height:100%} table{border-collapse:collapse;width:100%}
 td,th{border-bottom:1px solid #333;padding:2px 4px;text-align:right} th:first-child,td:first-child{text-align:left}
 .critical{color:#f66;font-weight:bold} .warning{color:#fc6} .none{color:#7c7} svg{background:#000;width:100%}
 .view{position:relative;line-height:0} .note,.caption{color:#999;font-size:12px;margin-top:4px}
 .scalebar{position:absolute;left:0;right:0;bottom:4px;line-height:1.2;font-size:11px;color:#fff;text-shadow:0 0 2px #000}
 .scalebar>div{height:4px;background:#fff;border:1px solid #000;margin-left:6px}
 .scalebar>span{margin-left:6px;padding:0 3px;background:rgba(0,0,0,.55)}
</style></head>
<body>
<h1>{{TITLE}} <span id="status"></span></h1>
<div id="updated" style="color:#888"></div>
<div class="grid">
 <div class="card"><h2>Progress per distance</h2><div id="progress"></div><div id="schedule"></div><div id="axis"></div><div id="material"></div></div>
 <div class="card"><h2>Alerts</h2><div id="alerts"></div></div>
 <div class="card"><h2>Resolution (running FSC)</h2><div id="fsc"></div>
   <div class="note" id="fsc_note">FSC: the half-bit resolution of the two half-volumes (even and odd angles),
   the finest detail resolved reproducibly. Edge fit: the blur (FWHM) of the strongest edge, the point-spread
   of the whole chain (detector, phase retrieval, back-projection, motion), typically larger.</div>
   <svg id="fsccurve" viewBox="0 0 300 150"></svg><svg id="fschist" viewBox="0 0 300 150"></svg></div>
 <div class="card"><h2>Dose</h2><div id="dose"></div></div>
 <div class="card"><h2>Drift and warping</h2><div id="drift"></div></div>
 <div class="card"><h2>Slice z (axial)</h2><div class="view"><img id="img_xy" alt="axial slice"><div class="scalebar" id="sb_xy"></div></div><div class="caption" id="cap_xy"></div></div>
 <div class="card"><h2>Slice y (coronal)</h2><div class="view"><img id="img_xz" alt="coronal slice"><div class="scalebar" id="sb_xz"></div></div><div class="caption" id="cap_xz"></div></div>
 <div class="card"><h2>Slice x (sagittal)</h2><div class="view"><img id="img_yz" alt="sagittal slice"><div class="scalebar" id="sb_yz"></div></div><div class="caption" id="cap_yz"></div></div>
 <div class="card"><h2>Phase map of the latest angle <span id="phase_angle"></span></h2><div class="view"><img id="img_phase" alt="phase"><div class="scalebar" id="sb_phase"></div></div><div class="caption" id="cap_phase"></div></div>
</div>
<script>
const $ = id => document.getElementById(id);
const fmt = (v, d=3) => v === null || v === undefined ? "-" : Number(v).toPrecision(d);
const nm = v => v === null || v === undefined ? "-" : (v * 1e9).toFixed(0) + " nm";
const len = m => m === null || m === undefined ? "-" : Math.abs(m) >= 1e-3 ? +(m * 1e3).toPrecision(3) + " mm"
  : Math.abs(m) >= 1e-6 ? +(m * 1e6).toPrecision(3) + " µm" : +(m * 1e9).toPrecision(3) + " nm";
function nice(m) {  // 1, 2 or 5 times a power of ten, at most m
  const e = Math.pow(10, Math.floor(Math.log10(m))), f = m / e;
  return (f >= 5 ? 5 : f >= 2 ? 2 : 1) * e;
}
function scalebar(name, info) {  // a bar of a round length, about a quarter of the image's width
  const el = $("sb_" + name), w = (info.shape || [])[1], px = info.pixel_m;
  if (!el) return;
  if (!w || !px) { el.innerHTML = ""; return; }
  const width = w * px, bar = nice(width / 4);
  el.innerHTML = `<span class="sb_label">${len(bar)}</span><div style="width:calc(${(100 * bar / width).toFixed(3)}% - 2px)"></div>`;
  el.dataset.barM = bar;
}
function caption(name, info) {  // where the slice is cut, its grey range, its pixel
  const el = $("cap_" + name);
  if (!el) return;
  const parts = [];
  if (info.axis) parts.push(`${info.axis} = ${len(info.position_m)}: slice ${info.index} of ${info.size}` +
    (info.binning > 1 ? ` (binned ${info.binning}×)` : "") + `; ${info.rows} down, ${info.columns} across`);
  if (info.grey) parts.push(`grey ${fmt(info.grey[0])} (black) to ${fmt(info.grey[1])} (white) ${info.unit || ""}` +
    (info.percentiles ? `, the ${info.percentiles[0]}–${info.percentiles[1]} % percentiles` : ""));
  if (info.pixel_m) parts.push(`pixel ${len(info.pixel_m)}`);
  el.textContent = parts.join(" · ");
}
function plot(svg, series, xlab, ylab, ymin, ymax, xmin, xmax) {
  const W = 300, H = 150, L = 34, B = 20;
  let xs = series.flatMap(s => s.x).filter(v => v !== null);
  if (!xs.length) { svg.innerHTML = ""; return; }
  const x0 = xmin ?? Math.min(...xs), x1 = xmax ?? (Math.max(...xs) || 1);
  let ys = series.flatMap(s => s.y).filter(v => v !== null);
  const y0 = ymin ?? Math.min(...ys), y1 = ymax ?? Math.max(...ys);
  const X = x => L + (W - L - 4) * (x - x0) / ((x1 - x0) || 1), Y = y => H - B - (H - B - 4) * (y - y0) / ((y1 - y0) || 1);
  let out = `<line x1="${L}" y1="${H-B}" x2="${W}" y2="${H-B}" stroke="#666"/><line x1="${L}" y1="0" x2="${L}" y2="${H-B}" stroke="#666"/>`;
  out += `<text x="${W-4}" y="${H-4}" fill="#999" font-size="10" text-anchor="end">${xlab}</text>`;
  out += `<text x="${L+4}" y="10" fill="#999" font-size="10">${ylab}</text>`;
  out += `<text x="${L}" y="${H-6}" fill="#999" font-size="9">${fmt(x0,2)}</text>`;
  out += `<text x="${L-2}" y="${H-B}" fill="#999" font-size="9" text-anchor="end">${fmt(y0,2)}</text><text x="${L-2}" y="12" fill="#999" font-size="9" text-anchor="end">${fmt(y1,2)}</text>`;
  for (const s of series) {
    const pts = s.x.map((x, i) => [x, s.y[i]]).filter(p => p[0] !== null && p[1] !== null);
    out += `<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${pts.map(p => X(p[0]).toFixed(1)+","+Y(p[1]).toFixed(1)).join(" ")}"/>`;
    if (s.dots) out += pts.map(p => `<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="2.5" fill="${s.color}"/>`).join("");
  }
  svg.innerHTML = out;
}
function render(s) {
  $("status").textContent = "— " + (s.status || "");
  $("updated").textContent = "update " + s.version + " at " + new Date(s.time_s * 1000).toLocaleTimeString();
  const q = s.quality || {}, prog = q.progress || [];
  $("progress").innerHTML = prog.map(p => {
    const expected = s.expected_frames_per_distance || Math.max(...prog.map(o => o.frames), 1);
    return `distance ${p.distance}: <b class="frames">${p.frames}</b> frames, ${p.projections} projections, ${p.returns} returns` +
      `<div class="bar"><div style="width:${Math.min(100, 100 * p.frames / expected)}%"></div></div>`;
  }).join("") + `<div>angles in the live volume: <b id="angles">${s.angles_seen ?? "-"}</b>, final (CTF): <b id="angles_final">${s.angles_final ?? "-"}</b></div>`;
  const sc = s.schedule;
  $("schedule").innerHTML = sc ? (sc.behind_s > 1 ? `<span class="warning">live slices <b id="behind">${fmt(sc.behind_s, 2)} s</b> behind the detector</span>` : "live slices current") +
    (sc.previews_skipped ? `; <b id="previews_skipped">${sc.previews_skipped}</b> previews skipped (their angle's CTF came first, or the stream was behind)` : "") +
    (sc.finals_coarse ? `; <b id="finals_coarse">${sc.finals_coarse}</b> angles at half resolution to catch up` : "") : "";
  const ax = s.rotation_axis;
  $("axis").innerHTML = ax ? `rotation axis: <b id="axis_px">${fmt(ax.px, 5)} px</b>` +
    (ax.columns ? ` of ${ax.columns} detector columns` : "") + ` (${ax.source || ""})` : "";
  const mt = s.material;
  $("material").innerHTML = mt && mt.delta_beta !== null ? `delta/beta: <b id="material_db">${fmt(mt.delta_beta, 4)}</b>` +
    (mt.interval ? ` (${fmt(mt.interval[0], 3)}-${fmt(mt.interval[1], 3)})` : "") + ` (${mt.source || ""})` : "";
  const al = q.alerts || [];
  $("alerts").innerHTML = al.length ? al.map(a => `<div class="${a.severity}">[${a.severity}] ${a.name}: ${a.message}</div>`).join("")
    : `<div class="none">no alert</div>`;
  const f = q.fsc || {};
  $("fsc").innerHTML = `resolution <b id="resolution">${nm(f.resolution_m)}</b> (binned ${nm(f.binned_resolution_m)}, ` +
    `edge fit ${nm(f.edge_resolution_m)}) at ${fmt(100 * (f.fraction_angles || 0), 3)} % of the angles, coverage ${fmt(f.coverage_deg, 3)}°`;
  const c = (f.curves || {}).region || (f.curves || {}).binned;
  if (c) plot($("fsccurve"), [{x: c.freq_per_m.map(v => v * 1e-6), y: c.fsc, color: "#4cf"},
                              {x: c.freq_per_m.map(v => v * 1e-6), y: c.half_bit, color: "#f84"}], "1/µm", "FSC", -0.2, 1);
  const h = f.history || [];
  plot($("fschist"), [{x: h.map(p => p.fraction_angles), y: h.map(p => p.resolution_m === null ? null : p.resolution_m * 1e9), color: "#4cf", dots: true},
                      {x: h.map(p => p.fraction_angles), y: h.map(p => p.edge_resolution_m === null ? null : p.edge_resolution_m * 1e9), color: "#c8f", dots: true}],
       "fraction of angles", "nm", undefined, undefined, 0, 1);
  const d = q.dose || {};
  $("dose").innerHTML = `this scan <b id="dose_total">${fmt(d.gray_total)} Gy</b>; sample ${d.sample || ""} total ${fmt(d.sample_gray)} Gy` +
    ` (earlier scans ${fmt(d.previous_scans_gray)} Gy)<table><tr><th>distance</th><th>Gy</th></tr>` +
    (d.per_distance_gray || []).map((g, i) => `<tr><td>${i + 1}</td><td>${fmt(g)}</td></tr>`).join("") + "</table>";
  const dr = q.drift || {}, w = q.warp || {};
  $("drift").innerHTML = "<table><tr><th>distance</th><th>return drift px</th><th>nm</th><th>vs reference px</th></tr>" +
    (dr.return_px || []).map((v, i) => `<tr><td>${i + 1}</td><td>${fmt(v)}</td><td>${nm((dr.return_m || [])[i])}</td><td>${fmt((dr.inter_distance_px || [])[i])}</td></tr>`).join("") +
    `</table>warp: rigid ${fmt(w.rigid_px)} px, scale ${w.scale === null || w.scale === undefined ? "-" : Number(w.scale).toFixed(5)}, ` +
    `non-rigid ${fmt(w.nonrigid_px)} px (${nm(w.nonrigid_m)})`;
  for (const [name, url] of Object.entries(s.images || {})) {
    const img = $("img_" + name);
    if (img && img.dataset.src !== url) { img.dataset.src = url; img.onload = () => img.dataset.loaded = "1"; img.src = url; }
  }
  for (const [name, info] of Object.entries(s.image_info || {})) { scalebar(name, info); caption(name, info); }
  if (s.phase_angle_deg !== undefined && s.phase_angle_deg !== null) $("phase_angle").textContent = "(" + fmt(s.phase_angle_deg, 4) + "°)";
  document.body.dataset.version = s.version;
}
async function poll() {
  try { const r = await fetch("state.json", {cache: "no-store"}); if (r.ok) render(await r.json()); }
  catch (e) { $("status").textContent = "— page server not answering"; }
}
poll(); setInterval(poll, 1000);
</script></body></html>
"""
