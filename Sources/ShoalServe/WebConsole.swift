/// The page `shoal serve` answers `GET /` with: the shoal at a glance, from the binary (no CDN,
/// nothing fetched from elsewhere; the Content-Security-Policy forbids it).
///
/// It reads only the API the server already has, with the API key the user types (kept in the
/// browser's localStorage): `GET /v1/cluster` (the workers and which expert each holds),
/// `GET /metrics` every 2 s (tokens per expert for the heat map; tokens/s and mean time to first
/// token from the counters' differences, kept for the last 5 minutes), `GET /v1/models`, and a
/// chat box streaming from `POST /v1/chat/completions`. A link can ask the first question:
/// `/?ask=TEXT` (with `&temperature=T&max_tokens=N`), which is also how the browser test drives it.
enum WebConsole {
    static let headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy",
         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ]

    static let page = Array(html.utf8)

    private static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Shoal</title>
    <style>
      body { font: 14px system-ui, sans-serif; margin: 0; background: #0f1720; color: #dde6ee; }
      header { display: flex; gap: 24px; align-items: baseline; padding: 12px 20px; background: #16212c; flex-wrap: wrap; }
      header h1 { font-size: 20px; margin: 0; }
      .stat b { font-size: 18px; color: #fff; }
      main { display: grid; grid-template-columns: minmax(420px, 1fr) minmax(360px, 1fr); gap: 16px; padding: 16px 20px; }
      section { background: #16212c; border-radius: 8px; padding: 12px 14px; }
      h2 { font-size: 15px; margin: 0 0 8px; color: #9fb3c8; }
      table { border-collapse: collapse; }
      td, th { padding: 3px 6px; text-align: left; }
      table.grid td { width: 34px; height: 20px; text-align: center; font-size: 11px; border: 1px solid #0f1720; }
      table.grid td.replica { outline: 2px solid #fff; outline-offset: -3px; }
      table.grid td.none { background: #5a1d1d; }
      #workers td { border-top: 1px solid #22313f; }
      .legend span { display: inline-block; padding: 1px 6px; margin: 2px; border-radius: 4px; color: #0f1720; }
      canvas { width: 100%; height: 90px; background: #0f1720; }
      #log { height: 300px; overflow-y: auto; background: #0f1720; padding: 8px; border-radius: 6px; white-space: pre-wrap; }
      .msg.user { color: #8fd3ff; } .msg.assistant { color: #fff; } .msg.error { color: #ff8f8f; }
      form { display: flex; gap: 6px; margin-top: 8px; }
      input, textarea, button { font: inherit; background: #0f1720; color: #dde6ee; border: 1px solid #2c3e50; border-radius: 4px; padding: 5px; }
      textarea { flex: 1; height: 42px; }
      .muted { color: #7d90a3; }
    </style>
    </head>
    <body>
    <header>
      <h1>Shoal</h1>
      <span class="stat">model <b id="model">…</b></span>
      <span class="stat">health <b id="health">…</b></span>
      <span class="stat">tokens/s <b id="tps">–</b></span>
      <span class="stat">time to first token <b id="ttft">–</b></span>
      <span class="stat">running <b id="running">–</b> · waiting <b id="queue">–</b></span>
      <label class="muted">API key <input id="key" type="password" size="18" autocomplete="off"></label>
    </header>
    <main>
      <div>
        <section>
          <h2>Placement: layers × experts, coloured by the worker that serves each (outlined: replicated)</h2>
          <div id="placement" class="muted">loading…</div>
          <div id="legend" class="legend"></div>
        </section>
        <section style="margin-top:16px">
          <h2>Tokens routed to each expert</h2>
          <div id="heat" class="muted">no tokens yet</div>
        </section>
        <section style="margin-top:16px">
          <h2>Workers</h2>
          <table id="workers"><tr><td class="muted">loading…</td></tr></table>
        </section>
      </div>
      <div>
        <section>
          <h2>Tokens/s (sampled), last 5 minutes</h2>
          <canvas id="chart" width="600" height="90"></canvas>
        </section>
        <section style="margin-top:16px">
          <h2>Chat</h2>
          <div id="log"></div>
          <form id="chat">
            <textarea id="prompt" placeholder="Ask the shoal…"></textarea>
            <button id="send">Send</button>
          </form>
          <div class="muted" style="margin-top:6px">
            temperature <input id="temperature" size="3" value="0.7">
            max tokens <input id="maxTokens" size="4" value="256">
            <button id="clear" type="button">Clear</button>
          </div>
        </section>
      </div>
    </main>
    <script>
    "use strict";
    const $ = (id) => document.getElementById(id);
    const params = new URLSearchParams(location.search);
    const palette = ["#4fc3f7", "#aed581", "#ffb74d", "#ba68c8", "#f06292", "#4db6ac", "#fff176", "#90a4ae", "#ff8a65", "#7986cb"];
    const colours = new Map();
    const colourOf = (address) => {
      if (!colours.has(address)) colours.set(address, palette[colours.size % palette.length]);
      return colours.get(address);
    };
    const state = { model: "", history: [], samples: [], last: null, messages: [] };
    $("key").value = localStorage.getItem("shoal-api-key") || "";
    $("key").addEventListener("change", () => { localStorage.setItem("shoal-api-key", $("key").value); refresh(); });
    if (params.has("temperature")) $("temperature").value = params.get("temperature");
    if (params.has("max_tokens")) $("maxTokens").value = params.get("max_tokens");

    function headers() {
      const h = { "Content-Type": "application/json" };
      if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
      return h;
    }
    function el(tag, attrs, text) {
      const e = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      return e;
    }
    function bytes(n) {
      if (n == null) return "–";
      const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
      while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
      return n.toFixed(i ? 1 : 0) + " " + units[i];
    }

    function drawPlacement(cluster) {
      const box = $("placement"); box.textContent = ""; box.className = "";
      const table = el("table", { class: "grid", id: "placement-grid" });
      const head = el("tr"); head.appendChild(el("th", {}, ""));
      const experts = cluster.holders.length ? cluster.holders[0].length : 0;
      for (let e = 0; e < experts; e++) head.appendChild(el("th", {}, "e" + e));
      table.appendChild(head);
      cluster.holders.forEach((row, layer) => {
        const tr = el("tr"); tr.appendChild(el("th", {}, "L" + layer));
        row.forEach((holders, expert) => {
          const td = el("td", { "data-layer": layer, "data-expert": expert, "data-holders": holders.join(" "),
                                title: "layer " + layer + ", expert " + expert + ": " + (holders.join(", ") || "no live holder") });
          if (holders.length === 0) { td.className = "none"; td.textContent = "!"; }
          else {
            td.style.background = colourOf(holders[0]);
            td.style.color = "#0f1720";
            td.textContent = holders.length > 1 ? "×" + holders.length : "";
            if (holders.length > 1) td.className = "replica";
          }
          tr.appendChild(td);
        });
        table.appendChild(tr);
      });
      box.appendChild(table);
      const legend = $("legend"); legend.textContent = "";
      for (const w of cluster.workers) {
        const s = el("span", {}, (w.name || w.address) + " · " + w.address);
        s.style.background = colourOf(w.address);
        legend.appendChild(s);
      }
    }

    function drawWorkers(cluster) {
      const t = $("workers"); t.textContent = "";
      const head = el("tr");
      for (const h of ["worker", "address", "state", "experts", "memory", "calls", "mean call", "failed"]) head.appendChild(el("th", {}, h));
      t.appendChild(head);
      for (const w of cluster.workers) {
        const tr = el("tr", { class: "worker", "data-address": w.address, "data-state": w.state });
        const pairs = w.experts.reduce((n, row) => n + row.length, 0);
        const memory = bytes(w.memory_used_bytes) + (w.memory_offered_bytes != null ? " of " + bytes(w.memory_offered_bytes) : "");
        const cells = [w.name, w.address, w.state, pairs + " pairs", memory, w.calls,
                       w.mean_call_milliseconds != null ? w.mean_call_milliseconds.toFixed(2) + " ms" : "–",
                       w.failed_calls + (w.last_error ? " (" + w.last_error + ")" : "")];
        for (const c of cells) tr.appendChild(el("td", {}, String(c)));
        t.appendChild(tr);
      }
    }

    function parseMetrics(text) {
      const m = { heat: [], series: {} };
      for (const line of text.split("\n")) {
        if (!line || line.startsWith("#")) continue;
        const match = line.match(/^([a-z_]+)(\{[^}]*\})?\s+(\S+)$/);
        if (!match) continue;
        const [, name, labels, value] = match;
        if (name === "shoal_expert_tokens_total") {
          const layer = +labels.match(/layer="(\d+)"/)[1], expert = +labels.match(/expert="(\d+)"/)[1];
          (m.heat[layer] = m.heat[layer] || [])[expert] = +value;
        } else if (!labels) {
          m.series[name] = +value;
        }
      }
      return m;
    }

    function drawHeat(heat) {
      const max = Math.max(0, ...heat.flat().filter((v) => v !== undefined));
      if (max === 0) return;
      const box = $("heat"); box.textContent = ""; box.className = "";
      const table = el("table", { class: "grid", id: "heat-grid" });
      heat.forEach((row, layer) => {
        const tr = el("tr"); tr.appendChild(el("th", {}, "L" + layer));
        (row || []).forEach((v, expert) => {
          const td = el("td", { title: "layer " + layer + ", expert " + expert + ": " + v + " tokens" }, String(v));
          td.style.background = "rgba(255, 140, 40, " + (0.08 + 0.92 * v / max).toFixed(3) + ")";
          tr.appendChild(td);
        });
        table.appendChild(tr);
      });
      box.appendChild(table);
    }

    function drawChart() {
      const c = $("chart"), g = c.getContext("2d");
      g.clearRect(0, 0, c.width, c.height);
      const now = Date.now(), span = 300000;
      const points = state.samples.filter((s) => now - s.t <= span);
      const top = Math.max(1, ...points.map((s) => s.tps));
      g.strokeStyle = "#4fc3f7"; g.lineWidth = 2; g.beginPath();
      points.forEach((s, i) => {
        const x = c.width * (1 - (now - s.t) / span), y = c.height - 4 - (c.height - 8) * s.tps / top;
        i ? g.lineTo(x, y) : g.moveTo(x, y);
      });
      g.stroke();
      g.fillStyle = "#7d90a3"; g.fillText(top.toFixed(1) + " tokens/s", 4, 12);
    }

    async function refresh() {
      try {
        const health = await fetch("/health");
        $("health").textContent = health.ok ? "ready" : "not ready (" + health.status + ")";
      } catch (e) { $("health").textContent = "unreachable"; }
      // The model never changes under a running server: asked for until it is known.
      if (!state.model) try {
        const r = await fetch("/v1/models", { headers: headers() });
        if (r.status === 401) { $("model").textContent = "API key needed"; return; }
        const models = await r.json();
        state.model = models.data[0].id; $("model").textContent = state.model;
      } catch (e) {}
      try {
        const r = await fetch("/v1/cluster", { headers: headers() });
        if (r.ok) {
          const cluster = await r.json();
          drawPlacement(cluster); drawWorkers(cluster);
        } else if (r.status === 404) {
          $("placement").textContent = "Every expert runs in this process (no workers).";
          $("workers").textContent = "";
        }
      } catch (e) {}
      try {
        const r = await fetch("/metrics", { headers: headers() });
        if (!r.ok) return;
        const m = parseMetrics(await r.text()), now = Date.now();
        drawHeat(m.heat);
        $("running").textContent = m.series.shoal_running_sequences ?? "–";
        $("queue").textContent = m.series.shoal_queue_depth ?? "–";
        const sample = { t: now, tokens: m.series.shoal_completion_tokens_total || 0,
                         ttftSum: m.series.shoal_time_to_first_token_seconds_sum || 0,
                         ttftCount: m.series.shoal_time_to_first_token_seconds_count || 0 };
        if (state.last && now > state.last.t) {
          const dt = (now - state.last.t) / 1000;
          const tps = Math.max(0, sample.tokens - state.last.tokens) / dt;
          state.samples.push({ t: now, tps });
          state.samples = state.samples.filter((s) => now - s.t <= 300000);
          $("tps").textContent = tps.toFixed(1);
          const n = sample.ttftCount - state.last.ttftCount;
          if (n > 0) $("ttft").textContent = ((sample.ttftSum - state.last.ttftSum) / n * 1000).toFixed(0) + " ms";
          drawChart();
        }
        if (!state.last || now > state.last.t) state.last = sample;
      } catch (e) {}
    }

    function addMessage(role, text) {
      const d = el("div", { class: "msg " + role }, text);
      $("log").appendChild(d); $("log").scrollTop = $("log").scrollHeight;
      return d;
    }

    async function ask(text) {
      if (!text.trim()) return;
      state.messages.push({ role: "user", content: text });
      addMessage("user", "you: " + text);
      const reply = addMessage("assistant", "");
      reply.id = "reply-" + state.messages.length;
      $("send").disabled = true;
      let content = "";
      try {
        const body = { model: state.model || "shoal", messages: state.messages, stream: true,
                       temperature: +$("temperature").value, max_tokens: +$("maxTokens").value };
        const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
        if (!r.ok) {
          const e = await r.json().catch(() => ({}));
          throw new Error((e.error && e.error.message) || ("HTTP " + r.status));
        }
        const reader = r.body.getReader(), decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
              const data = JSON.parse(line.slice(6));
              if (data.error) throw new Error(data.error.message);
              const delta = data.choices[0].delta.content;
              if (delta) { content += delta; reply.textContent = content; }
            }
          }
        }
        reply.setAttribute("data-done", "true");
        state.messages.push({ role: "assistant", content });
      } catch (e) {
        reply.className = "msg error"; reply.textContent = "error: " + e.message;
        reply.setAttribute("data-done", "error");
        state.messages.pop();
      } finally {
        $("send").disabled = false;
      }
    }

    $("chat").addEventListener("submit", (e) => { e.preventDefault(); const t = $("prompt").value; $("prompt").value = ""; ask(t); });
    $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("send").click(); } });
    $("clear").addEventListener("click", () => { state.messages = []; $("log").textContent = ""; });

    (async () => {
      await refresh();
      setInterval(refresh, 2000);
      if (params.has("ask")) { await ask(params.get("ask")); await refresh(); }
    })();
    </script>
    </body>
    </html>
    """#
}
