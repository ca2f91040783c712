// Face edit, live: camera -> server (edits each frame) -> this page.
// Controls travel over the "controls" data channel and apply to the next frame the server processes.
// Edits combine: each keeps its own strength (0 turns one off); "none" removes them all.
// window.faceedit = {start(), stop(), setEdit(name, strength), setView(mode), stats()} for automation;
// start({width, height, fps}) asks the camera for another size than 640x480 at 30 fps.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token") || "";
  const state = {
    config: null, pc: null, channel: null, stream: null,
    edits: {}, selected: "", view: "after",
    server: {}, browser: {}, statsTimer: null, lastError: "",
  };

  function setStatus(text) {
    state.lastError = text;
    $("status").textContent = text;
  }

  async function loadConfig() {
    if (state.config) return state.config;
    const response = await fetch("/config", { cache: "no-store" });
    state.config = await response.json();
    const select = $("edit");
    for (const name of state.config.edits) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.appendChild(option);
    }
    for (const preset of state.config.default_edits) state.edits[preset.name] = preset.strength;
    if (state.config.default_edits.length) showEdit(state.config.default_edits[0].name);
    return state.config;
  }

  function send(message) {
    if (state.channel && state.channel.readyState === "open") {
      state.channel.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function onMessage(event) {
    const message = JSON.parse(event.data);
    if (message.type === "stats") state.server = message;
    else if (message.type === "error") setStatus(message.message);
  }

  function waitForIce(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(done, ms);  // host candidates come at once; do not wait forever for a slow STUN server
    });
  }

  function firstRemoteFrame(video, pc, ms) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no edited video within ${ms / 1000} s`)), ms);
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") { clearTimeout(timer); reject(new Error("connection failed")); }
      });
      video.requestVideoFrameCallback(() => { clearTimeout(timer); resolve(); });
    });
  }

  async function start({ width = 640, height = 480, fps = 30 } = {}) {
    if (state.pc) return;
    setStatus("");
    const config = await loadConfig();
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: fps } }, audio: false,
    });
    $("local").srcObject = state.stream;
    const pc = new RTCPeerConnection({ iceServers: config.ice_servers });
    state.pc = pc;
    const channel = pc.createDataChannel("controls", { ordered: true });
    state.channel = channel;
    channel.onmessage = onMessage;
    channel.onopen = () => {
      send({ type: "edit", name: "", strength: 0 });
      for (const [name, strength] of Object.entries(state.edits)) send({ type: "edit", name, strength });
      send({ type: "view", mode: state.view });
    };
    const [track] = state.stream.getVideoTracks();
    track.contentHint = "motion";
    const sender = pc.addTrack(track, state.stream);
    const remote = $("remote");
    pc.ontrack = (event) => {
      // The server already keeps only the newest frame, so its output is irregular by design; a jitter
      // buffer would answer that irregularity with seconds of smoothing delay. Show frames as they decode.
      if ("playoutDelayHint" in event.receiver) event.receiver.playoutDelayHint = 0;
      if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
      remote.srcObject = event.streams[0] || new MediaStream([event.track]);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") setStatus("connection failed");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc, 3000);
    const response = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Token": token },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const answer = await response.json();
    if (!response.ok) {
      await stop();
      setStatus(answer.error || `server refused (${response.status})`);
      throw new Error(answer.error || `server refused (${response.status})`);
    }
    await pc.setRemoteDescription(answer);
    const parameters = sender.getParameters();
    if (parameters.encodings && parameters.encodings.length) {
      parameters.encodings[0].maxBitrate = config.max_kbps * 1000;
      await sender.setParameters(parameters);
    }
    $("start").disabled = true; $("stop").disabled = false; $("view").disabled = false;
    state.statsTimer = setInterval(pollStats, 1000);
    try {
      await firstRemoteFrame(remote, pc, 20000);
    } catch (error) {
      setStatus(error.message);
      throw error;
    }
  }

  async function stop() {
    send({ type: "bye" });
    if (state.statsTimer) clearInterval(state.statsTimer);
    state.statsTimer = null;
    if (state.pc) state.pc.close();
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.pc = state.channel = state.stream = null;
    $("remote").srcObject = null; $("local").srcObject = null;
    $("start").disabled = false; $("stop").disabled = true; $("view").disabled = true;
  }

  function showEdit(name) {
    state.selected = name || "";
    const strength = state.selected ? (state.edits[state.selected] ?? 1.0) : 0;
    $("edit").value = state.selected;
    $("strength").value = strength;
    $("strength-value").textContent = Number(strength).toFixed(1);
  }

  function setEdit(name, strength) {
    if (name) state.edits[name] = Number(strength);
    else state.edits = {};
    showEdit(name);
    return send({ type: "edit", name: name || "", strength: Number(strength) });
  }

  function setView(mode) {
    state.view = mode === "before" ? "before" : "after";
    $("view").textContent = state.view === "before" ? "Show after" : "Show before";
    return send({ type: "view", mode: state.view });
  }

  async function pollStats() {
    if (!state.pc) return;
    const report = await state.pc.getStats();
    const browser = {};
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        browser.fps = s.framesPerSecond || 0;
        browser.frames_decoded = s.framesDecoded;
        browser.width = s.frameWidth; browser.height = s.frameHeight;
      } else if (s.type === "outbound-rtp" && s.kind === "video") {
        browser.send_fps = s.framesPerSecond || 0;
        browser.send_kbps = state.browser.bytes_sent !== undefined
          ? Math.round(((s.bytesSent - state.browser.bytes_sent) * 8) / 1000) : 0;
        browser.bytes_sent = s.bytesSent;
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        browser.rtt_ms = (s.currentRoundTripTime || 0) * 1000;
      }
    });
    state.browser = browser;
    render();
  }

  function render() {
    const s = state.server, b = state.browser;
    const stages = Object.entries(s.stage_ms || {}).map(([k, v]) => `  ${k.padEnd(10)} ${v.toFixed(1)} ms`);
    $("readout").textContent = [
      `fps shown    ${(b.fps || 0).toFixed(1)} at ${b.width || 0}x${b.height || 0}` +
        `   (sent ${(b.send_fps || 0).toFixed(1)} fps, ${b.send_kbps || 0} kbps)`,
      `server       ${(s.latency_p50_ms || 0).toFixed(0)} ms p50, ${(s.latency_p95_ms || 0).toFixed(0)} ms p95, ` +
        `${s.dropped || 0} dropped`,
      `network rtt  ${(b.rtt_ms || 0).toFixed(0)} ms`,
      s.fidelity_db == null ? "face drawn   not measured (student path, or no face yet)"
        : `face drawn   ${s.fidelity_db.toFixed(1)} dB, edit weight ${s.gate_weight.toFixed(2)}` +
          (s.gate_weight < 1 ? " (the model draws this face poorly: edit weakened)" : ""),
      "stages", ...stages,
    ].join("\n");
  }

  function stats() {
    return {
      connection: state.pc ? state.pc.connectionState : "closed",
      edits: { ...state.edits }, view: state.view,
      server: { ...state.server }, browser: { ...state.browser }, error: state.lastError,
    };
  }

  $("start").onclick = () => start().catch((e) => setStatus(e.message));
  $("stop").onclick = () => stop();
  $("view").onclick = () => setView(state.view === "after" ? "before" : "after");
  $("edit").onchange = (e) => setEdit(e.target.value, state.edits[e.target.value] ?? 1.0);
  $("strength").oninput = (e) => setEdit(state.selected, e.target.value);
  window.addEventListener("pagehide", () => { stop(); });
  loadConfig().catch((e) => setStatus(`cannot load /config: ${e.message}`));

  window.faceedit = { start, stop, setEdit, setView, stats };
})();
