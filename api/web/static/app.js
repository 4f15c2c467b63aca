// varstore audit page: live "N new changes" notices, the as-of slider, the charts.
"use strict";

function followLive() {
  const box = document.getElementById("live");
  if (!box || !window.EventSource) return;
  const source = new EventSource(box.dataset.src);
  source.onmessage = (message) => {
    const data = JSON.parse(message.data);
    const count = data.more ? data.new + "+" : String(data.new);
    box.textContent = "";
    const where = data.position ? " (now at position " + data.position + ")" : "";
    const text = document.createTextNode(
      count + (data.new === 1 ? " new change" : " new changes") + " since this page was served" + where + ". ");
    const link = document.createElement("a");
    link.href = box.dataset.latest;
    link.textContent = "Show the latest";
    box.append(text, link);
    box.dataset.position = data.position;
    box.hidden = false;
  };
}

function mirrorSlider() {
  const slider = document.getElementById("at-slider");
  const field = document.getElementById("at");
  if (!slider || !field) return;
  slider.addEventListener("input", () => { field.value = slider.value; });
  field.addEventListener("input", () => { if (field.value) slider.value = field.value; });
}

function drawChart() {
  const holder = document.getElementById("chart");
  const source = document.getElementById("chart-data");
  if (!holder || !source || !window.uPlot) return;
  const data = JSON.parse(source.textContent);
  const times = data.ms.map((ms) => data.start + ms / 1000);
  const stepped = uPlot.paths.stepped({ align: 1 });
  const series = [{}, {
    label: data.kind === "number" ? "value" : "state",
    stroke: "#0a5bd3", width: 2, paths: stepped,
    points: { show: true, size: 6, fill: "#0a5bd3" },
  }];
  const columns = [times, data.values];
  const bound = (value, label, color) => {
    if (value === null || value === undefined) return;
    series.push({ label: label, stroke: color, dash: [6, 4], width: 1.5, points: { show: false } });
    columns.push(times.map(() => value));
  };
  bound(data.low, "min", "#a40e26");
  bound(data.high, "max", "#a40e26");
  const axes = [{}, {}];
  const scales = { x: { time: true } };
  if (data.kind === "lanes") {
    axes[1] = { values: (u, ticks) => ticks.map((t) => data.lanes[t] ?? ""), size: 90 };
    scales.y = { range: [-0.5, data.lanes.length - 0.5] };
    axes[1].splits = () => data.lanes.map((_, i) => i);
  }
  const width = () => Math.max(280, holder.clientWidth);
  const plot = new uPlot({
    width: width(), height: 260, series: series, axes: axes, scales: scales,
    cursor: { points: { size: 8 } },
  }, columns, holder);
  holder.dataset.points = String(times.length);
  window.addEventListener("resize", () => plot.setSize({ width: width(), height: 260 }));
}

document.addEventListener("DOMContentLoaded", () => {
  mirrorSlider();
  // The chart and the event stream start after the first paint: the tables show at once.
  // uPlot loads asynchronously (it does not hold up the first paint either).
  requestAnimationFrame(() => setTimeout(() => {
    followLive();
    const uplot = document.getElementById("uplot-script");
    if (window.uPlot || !uplot) drawChart();
    else uplot.addEventListener("load", drawChart);
  }, 0));
});
