#!/usr/bin/env python3
"""Write report.md and plot-<scenario>.svg for a scripts/bench.sh result directory.

    scripts/bench_report.py RESULT_DIR [--loadgen PATH]

Reads RESULT_DIR/meta.txt, RESULT_DIR/runs.tsv (one line per run, written by bench.sh)
and the loadgen JSON files it names. Every figure is a median over the rounds, taken per
metric; ratios are computed from those medians. Python 3 standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

PEERS = ("nginx", "haproxy")
# The blind TCP relay (HAProxy in mode tcp): a floor for the CPU cost, never a peer.
RELAY = "tcp-relay"
# A blind relay straight on io_uring (bench/src/bin/ring_relay.rs): the floor for a proxy on the ring.
RING = "ring-relay"
SPELL_US = 2000  # a 10-ms slice of the open loop with a request this slow is a spell
SPIN = "gateway-spin"  # the gateway with busy_poll (get-c1, open-loop)
# ring-relay polling its ring as busy_poll does (get-c1): the least a spinning proxy adds.
RING_SPIN = "ring-relay-spin"
SPIN_POLL = "200us"
SPLICE = "gateway-splice"  # the gateway with splice: true (1 MiB scenarios)

SCENARIOS = {
    "get-c1": "GET, 1 connection (closed loop)",
    "get-c64": "GET, 64 connections (closed loop)",
    "get-c256": "GET, 256 connections (closed loop)",
    "post16k-c64": "POST with a 16 KiB body, 64 connections (closed loop)",
    "open-loop": "GET, open loop at a fixed rate, 64 connections",
    "breaker": "GET, 64 connections, one of three backends down (nothing listening)",
    "limits": "GET, 64 connections, the gateway without and with admission control "
              "(a service-wide rate limit and max_in_flight far above the load)",
    "upload-1m": "POST with a 1 MiB body, 16 connections (closed loop)",
    "download-1m": "GET answered with a 1 MiB body, 16 connections (closed loop)",
    "get-c10k": "GET, 10000 connections (closed loop)",
}

# MiB of body per request in the scenarios whose cost is reported per MiB.
MIB_PER_REQUEST = {"upload-1m": 1.0, "download-1m": 1.0}


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def load_runs(out):
    runs = []
    with open(os.path.join(out, "runs.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            with open(os.path.join(out, row["json"])) as jf:
                j = json.load(jf)
            req = j["requests"]
            tck = int(row["clk_tck"])
            proxy_ticks = int(row["proxy_ticks"])
            lat = j["latency_us"]
            runs.append(
                {
                    "scenario": row["scenario"],
                    "round": int(row["round"]),
                    "target": row["target"],
                    "json": row["json"],
                    "requests": req,
                    "rps": j["ok_rps"],
                    "p50": lat["p50"],
                    "p99": lat["p99"],
                    "p999": lat["p99_9"],
                    "max": lat["max"],
                    "errors": j["errors"]["total"],
                    "warmup_errors": j["warmup_errors"]["total"],
                    "reconnects": j["reconnects"],
                    "unsent": j.get("unsent", 0),
                    "send_lag_p99": j.get("send_lag_us", {}).get("p99", 0),
                    "rate": j.get("rate", 0),
                    # 10-ms bins of the window whose slowest request took ≥ 2 ms (loadgen's
                    # timeline; None in results from before it had one).
                    "spells": sum(us >= SPELL_US for us in j["timeline"]["max_us"])
                    if j.get("timeline") else None,
                    # The direct target has no proxy process: no CPU figure.
                    "cpu_us": (proxy_ticks / tck * 1e6 / req)
                    if (req and not row["target"].startswith("direct"))
                    else None,
                    "backend_us": int(row["backend_ticks"]) / tck * 1e6 / req if req else None,
                    "load_util": float(row["load_core_util"]),
                    # CPU on the two benchmark cores used by anything but the proxy, the
                    # backends and loadgen (other work on the machine), in % of one core.
                    "other_pct": max(
                        0.0,
                        100.0
                        * (
                            int(row["busy_ticks"])
                            - proxy_ticks
                            - int(row["backend_ticks"])
                            - int(row["loadgen_ticks"])
                        )
                        / tck
                        / float(row["window_s"]),
                    ),
                    "proxy_util": float(row["proxy_core_util"]),
                    "window_s": float(row["window_s"]),
                }
            )
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    """{scenario: {target: {metric: median}}} keeping the first-seen target order."""
    out = {}
    for r in runs:
        out.setdefault(r["scenario"], {}).setdefault(r["target"], []).append(r)
    summary = {}
    for scen, targets in out.items():
        summary[scen] = {}
        for target, rs in targets.items():
            m = {k: med([r[k] for r in rs]) for k in (
                "rps", "p50", "p99", "p999", "cpu_us", "backend_us", "load_util",
                "proxy_util", "send_lag_p99", "other_pct", "spells")}
            m["errors"] = sum(r["errors"] for r in rs)
            m["warmup_errors"] = sum(r["warmup_errors"] for r in rs)
            m["unsent"] = sum(r["unsent"] for r in rs)
            m["reconnects"] = sum(r["reconnects"] for r in rs)
            m["rounds"] = len(rs)
            m["rate"] = rs[0]["rate"]
            m["runs"] = rs
            summary[scen][target] = m
    return summary


def ms(us):
    if us is None:
        return "—"
    return f"{us / 1000:.3f}" if us < 10000 else f"{us / 1000:.1f}"


def num(v, fmt="{:.0f}"):
    return "—" if v is None else fmt.format(v)


def other(v):
    return num(v, "{:.0f}") + (" ⚠" if v is not None and v >= 10 else "")


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fx(v):
    return "—" if v is None else f"{v:.2f}×"


def base(target):
    return target.split("-")[0]


def better_peer(scen_summary, metric, higher_is_better, suffix=""):
    vals = [
        (scen_summary[p + suffix][metric], p + suffix)
        for p in PEERS
        if p + suffix in scen_summary and scen_summary[p + suffix][metric] is not None
    ]
    if not vals:
        return None, None
    return (max if higher_is_better else min)(vals)


def plots(out, summary, loadgen):
    made = {}
    if not loadgen or not os.path.exists(loadgen):
        return made
    for scen, targets in summary.items():
        files = []
        for target, m in targets.items():
            # The round whose throughput (open loop: p99.9) is the median of the rounds.
            key = "p999" if scen == "open-loop" else "rps"
            rs = sorted(m["runs"], key=lambda r: r[key])
            files.append(os.path.join(out, rs[(len(rs) - 1) // 2]["json"]))
        svg = f"plot-{scen}.svg"
        title = f"{scen}: {SCENARIOS.get(scen, scen)} (median round per target)"
        res = subprocess.run(
            [loadgen, "plot", "--out", os.path.join(out, svg), "--title", title, *files],
            capture_output=True,
            text=True,
        )
        if res.returncode == 0:
            made[scen] = svg
        else:
            print(f"bench_report: plot {scen} failed: {res.stderr.strip()}", file=sys.stderr)
    return made


def scenario_table(scen, targets, summary):
    lines = []
    suffix = "-1down" if scen == "breaker" else ""
    cpu_best, cpu_who = better_peer(targets, "cpu_us", False, suffix)
    rps_best, rps_who = better_peer(targets, "rps", True, suffix)
    p99_best, p99_who = better_peer(targets, "p99", False, suffix)
    p999_best, p999_who = better_peer(targets, "p999", False, suffix)
    direct = targets.get("direct")
    relay = targets.get(RELAY)
    ring = targets.get(RING)
    mib = MIB_PER_REQUEST.get(scen)
    open_loop = scen == "open-loop"
    head = ["target", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/req"]
    if mib:
        head += ["MiB/s", "CPU µs/MiB"]
    head += ["CPU vs better peer", "req/s vs better peer"]
    if relay:
        head += ["CPU vs TCP relay"]
    if ring:
        head += ["CPU vs ring relay"]
    if open_loop:
        head += ["p99 vs better peer", "p99.9 vs better peer", "send lag p99 µs", "unsent",
                 "spells ≥ 2 ms"]
    else:
        head += ["p99 vs better peer"]
    if direct:
        head += ["req/s vs direct", "p50 − direct µs"]
    if scen == "breaker":
        three_up = summary.get("get-c64", {})
        head += ["req/s vs 3-up", "p99 vs 3-up"]
    head += ["backend CPU µs/req", "load core %", "proxy core %", "other CPU %", "errors"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for target, m in targets.items():
        row = [
            f"**{target}**" if base(target) == "gateway" else target,
            num(m["rps"]),
            ms(m["p50"]),
            ms(m["p99"]),
            ms(m["p999"]),
            num(m["cpu_us"], "{:.1f}"),
        ]
        if mib:
            row += [
                num(m["rps"] * mib if m["rps"] is not None else None),
                num(m["cpu_us"] / mib if m["cpu_us"] is not None else None, "{:.0f}"),
            ]
        row += [
            fx(ratio(m["cpu_us"], cpu_best)),
            fx(ratio(m["rps"], rps_best)),
        ]
        if relay:
            row += [fx(ratio(m["cpu_us"], relay["cpu_us"]))]
        if ring:
            row += [fx(ratio(m["cpu_us"], ring["cpu_us"]))]
        if open_loop:
            row += [fx(ratio(m["p99"], p99_best)), fx(ratio(m["p999"], p999_best)),
                    num(m["send_lag_p99"]), str(m["unsent"]), num(m["spells"])]
        else:
            row += [fx(ratio(m["p99"], p99_best))]
        if direct:
            row += [
                fx(ratio(m["rps"], direct["rps"])),
                num(m["p50"] - direct["p50"]) if m["p50"] is not None else "—",
            ]
        if scen == "breaker":
            up = three_up.get(base(target))
            row += [
                fx(ratio(m["rps"], up["rps"] if up else None)),
                fx(ratio(m["p99"], up["p99"] if up else None)),
            ]
        load = m["load_util"]
        row += [
            num(m["backend_us"], "{:.1f}"),
            num(load, "{:.0f}") + (" ⚠" if load is not None and load >= 95 else ""),
            num(m["proxy_util"], "{:.0f}"),
            other(m["other_pct"]),
            str(m["errors"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    if cpu_who:
        notes.append(f"better peer: CPU {cpu_who}, req/s {rps_who}, p99 {p99_who}"
                     + (f", p99.9 {p999_who}" if open_loop else ""))
    if relay:
        notes.append(f"{RELAY} is a blind TCP relay (HAProxy in mode tcp), a floor and not a "
                     "peer: it does no HTTP work at all (no parsing, no routing, no header "
                     "rewrite, no prefix strip: the backend receives /v1/proxy/bench/... "
                     "unchanged, which the mock backend answers like any path) and keeps no "
                     "upstream pool (one backend connection per client connection)")
    if ring:
        notes.append(f"{RING} is the same kind of blind relay written straight on io_uring, "
                     "the ring set up as the gateway's (bench/src/bin/ring_relay.rs): the "
                     "floor for a proxy on the ring, where HAProxy's relay runs on epoll")
    if RING_SPIN in targets:
        notes.append(f"{RING_SPIN} is {RING} polling its ring for {SPIN_POLL} after each "
                     f"completion, as {SPIN} does: the least a proxy on the proxy core adds "
                     "over direct while spinning (the load core still sleeps and is woken "
                     "twice per request, where direct's client and backend share a core)")
    return lines, notes


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def disturbed_note(*rows):
    worst = max((r["other_pct"] for r in rows if r and r.get("other_pct") is not None), default=0)
    if worst >= 10:
        return f" (disturbed: other CPU up to {worst:.0f}% of a core in these medians)"
    return ""


def targets_section(summary):
    rows = []
    c64 = summary.get("get-c64", {})
    gw = c64.get("gateway")
    if gw:
        best, who = better_peer(c64, "cpu_us", False)
        r = ratio(gw["cpu_us"], best)
        rows.append((
            "CPU per request ≤ 0.7× the better peer (GET, 64 conns)",
            f"gateway {gw['cpu_us']:.1f} µs vs {who} {best:.1f} µs = {r:.2f}×" if r else "—",
            (verdict(r <= 0.7) + disturbed_note(gw, c64.get(who))) if r else verdict(None),
        ))
        tr = c64.get(RELAY)
        if tr:
            r = ratio(gw["cpu_us"], tr["cpu_us"])
            rows.append((
                "CPU per request ≤ 0.95× the TCP relay (GET, 64 conns)",
                f"gateway {gw['cpu_us']:.1f} µs vs {RELAY} {tr['cpu_us']:.1f} µs = {r:.2f}×"
                if r else "—",
                (verdict(r <= 0.95) + disturbed_note(gw, tr)) if r else verdict(None),
            ))
        rr = c64.get(RING)
        if rr:
            r = ratio(gw["cpu_us"], rr["cpu_us"])
            rows.append((
                "CPU per request against the ring relay (GET, 64 conns; no target, the floor "
                "on the ring)",
                f"gateway {gw['cpu_us']:.1f} µs vs {RING} {rr['cpu_us']:.1f} µs = {r:.2f}×"
                if r else "—",
                "information",
            ))
        best, who = better_peer(c64, "rps", True)
        r = ratio(gw["rps"], best)
        rows.append((
            "Throughput at 64 conns ≥ the better peer",
            f"gateway {gw['rps']:.0f} req/s vs {who} {best:.0f} = {r:.2f}×" if r else "—",
            (verdict(r >= 1.0) + disturbed_note(gw, c64.get(who))) if r else verdict(None),
        ))
        best, who = better_peer(c64, "p99", False)
        r = ratio(gw["p99"], best)
        rows.append((
            "p99 at 64 conns ≤ 0.8× the better peer",
            f"gateway {ms(gw['p99'])} ms vs {who} {ms(best)} ms = {r:.2f}×" if r else "—",
            (verdict(r <= 0.8) + disturbed_note(gw, c64.get(who))) if r else verdict(None),
        ))
    per_scen = []
    for scen, s in summary.items():
        g = s.get("gateway") or s.get("gateway-1down")
        suffix = "-1down" if scen == "breaker" else ""
        best, who = better_peer(s, "cpu_us", False, suffix)
        r = ratio(g["cpu_us"], best) if g else None
        if r is not None:
            per_scen.append(f"{scen} {g['cpu_us']:.1f} vs {best:.1f} µs ({base(who)}) = {r:.2f}×")
    if per_scen:
        rows.append((
            "CPU per request vs the better peer, every scenario (for reference)",
            "; ".join(per_scen),
            "measured",
        ))
    rows += added_latency_rows(summary)
    rows += per_mib_rows(summary)
    rows += connections_rows(summary)
    relay_scen = []
    for scen, s in summary.items():
        g, tr = s.get("gateway"), s.get(RELAY)
        r = ratio(g["cpu_us"], tr["cpu_us"]) if g and tr else None
        if r is not None:
            relay_scen.append(f"{scen} {g['cpu_us']:.1f} vs {tr['cpu_us']:.1f} µs = {r:.2f}×")
    if relay_scen:
        rows.append((
            "CPU per request vs the TCP relay, every scenario (for reference)",
            "; ".join(relay_scen),
            "measured",
        ))
    ol = summary.get("open-loop", {})
    gw_ol = ol.get("gateway")
    if gw_ol:
        direct = ol.get("direct")
        for key, name in (("p99", "p99"), ("p999", "p99.9")):
            best, who = better_peer(ol, key, False)
            r = ratio(gw_ol[key], best)
            floor = (f"; direct (no proxy, the load side's own tail) {ms(direct[key])} ms"
                     if direct and direct.get(key) is not None else "")
            rows.append((
                f"Open-loop {name} ≤ the better peer ({gw_ol['rate']:.0f} req/s)",
                (f"gateway {ms(gw_ol[key])} ms vs {who} {ms(best)} ms = {r:.2f}×{floor}"
                 if r else "—"),
                (verdict(r <= 1.0) + disturbed_note(gw_ol, ol.get(who))) if r else verdict(None),
            ))
    for scen in ("get-c1", "get-c64"):
        s = summary.get(scen, {})
        if "gateway" in s and "direct" in s:
            g, d = s["gateway"], s["direct"]
            rows.append((
                f"Gateway overhead vs direct ({scen})",
                f"req/s {g['rps'] / d['rps']:.2f}× of direct; p50 +{g['p50'] - d['p50']:.0f} µs "
                f"({ms(d['p50'])} → {ms(g['p50'])} ms); p99 {ms(d['p99'])} → {ms(g['p99'])} ms",
                "measured (no threshold)",
            ))
    lim = summary.get("limits", {})
    if "gateway" in lim and "gateway-limited" in lim:
        off, on = lim["gateway"], lim["gateway-limited"]
        if off["cpu_us"] is not None and on["cpu_us"] is not None:
            extra = on["cpu_us"] - off["cpu_us"]
            rows.append((
                "Admission control: a service-wide limit above the load adds ≤ 0.3 µs CPU "
                "per request",
                f"{off['cpu_us']:.2f} → {on['cpu_us']:.2f} µs ({extra:+.2f} µs); "
                "run-to-run noise here is ±10% (±1.5 µs): see `cargo bench --bench hot_path` "
                "for the cost of the check itself",
                verdict(extra <= 0.3) + disturbed_note(on, off),
            ))
    br = summary.get("breaker", {})
    if "gateway-1down" in br and gw:
        g = br["gateway-1down"]
        rr, pr = g["rps"] / gw["rps"], g["p99"] / gw["p99"]
        flat = 0.9 <= rr <= 1.1 and pr <= 1.25 and g["errors"] == 0
        rows.append((
            "Breaker: one backend down, throughput and latency flat vs 3 up "
            "(req/s within ±10%, p99 ≤ 1.25×, no errors)",
            f"req/s {rr:.2f}×, p99 {pr:.2f}×, errors {g['errors']} "
            f"({g['rps']:.0f} vs {gw['rps']:.0f} req/s, p99 {ms(g['p99'])} vs {ms(gw['p99'])} ms)",
            verdict(flat) + disturbed_note(g, gw),
        ))
    lines = ["| target | measured (medians) | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return lines


def added_latency_rows(summary):
    """get-c1: the latency a proxy adds over direct, at p50, gateway vs the better peer."""
    s = summary.get("get-c1", {})
    g, d = s.get("gateway"), s.get("direct")
    if not g or not d or g["p50"] is None or d["p50"] is None:
        return []
    added = {t: s[t]["p50"] - d["p50"] for t in (*PEERS, RELAY)
             if t in s and s[t]["p50"] is not None}
    peers = [(added[p], p) for p in PEERS if p in added]
    if not peers:
        return []
    best, who = min(peers)
    mine = g["p50"] - d["p50"]
    r = ratio(mine, best) if best > 0 else None
    relay = (f"; {RELAY} adds {added[RELAY]:.0f} µs" if RELAY in added else "")
    return [(
        "Added latency at 1 conn: gateway p50 − direct p50 ≤ 0.5× (better peer p50 − direct "
        "p50) (get-c1)",
        f"gateway +{mine:.0f} µs vs {who} +{best:.0f} µs over direct {ms(d['p50'])} ms"
        + (f" = {r:.2f}×" if r is not None else "") + relay,
        (verdict(r <= 0.5) + disturbed_note(g, s.get(who), d)) if r is not None
        else verdict(None),
    )] + spin_rows(s, d, best, who)


def spin_rows(s, d, best, who):
    """get-c1 with `busy_poll` (the gateway-spin target): added latency and what it costs."""
    sp, g = s.get(SPIN), s.get("gateway")
    if not sp or sp["p50"] is None or best <= 0:
        return []
    mine = sp["p50"] - d["p50"]
    r = ratio(mine, best)
    cost = ""
    if sp["cpu_us"] is not None and g and g["cpu_us"] is not None:
        cost = (f"; CPU {sp['cpu_us']:.1f} µs/req (off: {g['cpu_us']:.1f}), "
                f"proxy core {sp['proxy_util']:.0f}% busy (off: {g['proxy_util']:.0f}%), "
                f"{sp['rps']:.0f} req/s (off: {g['rps']:.0f})")
    floor, result = "", verdict(r <= 0.5)
    rs = s.get(RING_SPIN)
    if rs and rs["p50"] is not None:
        fr = ratio(rs["p50"] - d["p50"], best)
        floor = (f"; {RING_SPIN} (a blind relay spinning alike: the floor) "
                 f"+{rs['p50'] - d['p50']:.0f} µs = {fr:.2f}×")
        if r > 0.5 and fr > 0.5:
            result += f" (the floor's median misses too: {fr:.2f}×)"
    return [(
        f"Added latency at 1 conn with `busy_poll: {SPIN_POLL}` (opt-in): ≤ 0.5× the better "
        "peer's (get-c1)",
        f"{SPIN} +{mine:.0f} µs vs {who} +{best:.0f} µs = {r:.2f}×{floor}{cost}",
        result + disturbed_note(sp, s.get(who), d, rs),
    )]


def per_mib_rows(summary):
    """upload-1m / download-1m: CPU per MiB of body vs the better peer (the gateway as
    configured by default, then with `splice: true`, the gateway-splice target)."""
    rows = []
    for scen, mib in MIB_PER_REQUEST.items():
        s = summary.get(scen, {})
        rows += mib_rows(scen, mib, s, "gateway")
        rows += mib_rows(scen, mib, s, SPLICE)
    return rows


def mib_rows(scen, mib, s, target):
    """One CPU-per-MiB row for `target` (gateway or gateway-splice), with req/s beside it:
    splicing moves work to the senders, which share the load core here."""
    g = s.get(target)
    if not g or g["cpu_us"] is None:
        return []
    best, who = better_peer(s, "cpu_us", False)
    r = ratio(g["cpu_us"], best)
    tr = s.get(RELAY)
    relay = (f"; {RELAY} {tr['cpu_us'] / mib:.0f} µs"
             if tr and tr["cpu_us"] is not None else "")
    rps_best, rps_who = better_peer(s, "rps", True)
    rps = (f"; req/s {g['rps']:.0f} vs {rps_who} {rps_best:.0f}"
           if rps_best and g["rps"] is not None else "")
    label = "" if target == "gateway" else " with `splice: true` (opt-in)"
    return [(
        f"CPU per MiB ≤ 0.8× the better peer ({scen}){label}",
        f"{target} {g['cpu_us'] / mib:.0f} µs/MiB vs {who} {best / mib:.0f} µs/MiB = "
        f"{r:.2f}×{relay}{rps}" if r else "—",
        (verdict(r <= 0.8) + disturbed_note(g, s.get(who))) if r else verdict(None),
    )]


def connections_rows(summary):
    """get-c256 / get-c10k: CPU per request ≤ 0.9× and p99 ≤ 1× the better peer."""
    rows = []
    for scen, n in (("get-c256", "256"), ("get-c10k", "10k")):
        s = summary.get(scen, {})
        g = s.get("gateway")
        if not g:
            continue
        best, who = better_peer(s, "cpu_us", False)
        r = ratio(g["cpu_us"], best)
        rows.append((
            f"CPU per request ≤ 0.9× the better peer (GET, {n} conns)",
            f"gateway {g['cpu_us']:.1f} µs vs {who} {best:.1f} µs = {r:.2f}×" if r else "—",
            (verdict(r <= 0.9) + disturbed_note(g, s.get(who))) if r else verdict(None),
        ))
        best, who = better_peer(s, "p99", False)
        r = ratio(g["p99"], best)
        errs = "".join(f", {t} {s[t]['errors']} errors" for t in ("gateway", *PEERS)
                       if t in s and s[t]["errors"])
        errs += "".join(f", {t} {s[t]['warmup_errors']} warm-up errors"
                        for t in ("gateway", *PEERS) if t in s and s[t]["warmup_errors"])
        rows.append((
            f"p99 ≤ the better peer (GET, {n} conns)",
            (f"gateway {ms(g['p99'])} ms vs {who} {ms(best)} ms = {r:.2f}×" if r else "—")
            + errs,
            (verdict(r <= 1.0) + disturbed_note(g, s.get(who))) if r else verdict(None),
        ))
    return rows


def per_round_section(summary):
    """The gateway against the better peer of the same round, round by round: the targets
    take ratios of medians, and one slow round moves a median of few rounds a lot."""
    L = ["### Round by round", "",
         "The gateway's CPU per request (and, in the open loop, its p99) over the better "
         "peer's in the same round, in round order; the targets above take ratios of "
         "medians instead.", "",
         "| scenario | per round | range | median |", "|---|---|---|---|"]
    for scen, targets in summary.items():
        suffix = "-1down" if scen == "breaker" else ""
        gw = targets.get("gateway" + suffix)
        peers = [targets[p + suffix] for p in ("nginx", "haproxy") if p + suffix in targets]
        if not gw or not peers:
            continue
        metrics = [("cpu_us", "CPU")] + ([("p99", "p99")] if scen == "open-loop" else [])
        for metric, label in metrics:
            ratios = []
            for r in sorted(gw["runs"], key=lambda r: r["round"]):
                best = [x[metric] for p in peers for x in p["runs"]
                        if x["round"] == r["round"] and x[metric]]
                if r[metric] and best:
                    ratios.append(r[metric] / min(best))
            if ratios:
                L.append(f"| {scen} {label} | {' '.join(f'{x:.2f}' for x in ratios)} "
                         f"| {min(ratios):.2f}–{max(ratios):.2f}× "
                         f"| {statistics.median(ratios):.2f}× |")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--loadgen", default=None)
    args = ap.parse_args()
    out = args.out
    meta = load_meta(os.path.join(out, "meta.txt"))
    runs = load_runs(out)
    summary = summarize(runs)
    made = plots(out, summary, args.loadgen)

    L = []
    date = meta.get("date_utc", "?")
    L.append(f"# Gateway benchmark, {date} UTC")
    L.append("")
    L.append("Generated by `scripts/bench.sh` and `scripts/bench_report.py`; every figure is a "
             "median over the rounds (per metric), ratios are taken between those medians.")
    L.append("")
    L.append("## Command and machine")
    L.append("")
    L.append(f"- command: `{meta.get('command', '?')}`")
    cpu = meta.get("cpu_model", "?") + (f" ({meta['cpu_id']})" if meta.get("cpu_id") else "")
    L.append(f"- `nproc`: {meta.get('nproc', '?')}; CPU: {cpu}; "
             f"kernel: {meta.get('kernel', '?')}"
             + (f"; open files (soft/hard): {meta['nofile']}" if meta.get("nofile") else ""))
    L.append(f"- {meta.get('rustc', '?')}; {meta.get('nginx', '?')}; "
             f"{meta.get('haproxy', '?')}")
    L.append(f"- gateway commit {meta.get('git', '?')}")
    L.append(f"- load average at start {meta.get('loadavg_start', '?')}, at end "
             f"{meta.get('loadavg_end', '?')}; whole run {meta.get('elapsed_s', '?')} s")
    if meta.get("nice", "0") != "0":
        L.append(f"- every benchmark process ran at nice {meta['nice']} (`BENCH_NICE`)")
    if meta.get("note"):
        L.append(f"- note: {meta['note']}")
    L.append("")
    L.append("## Setup")
    L.append("")
    L.append(f"- Pinning: loadgen (1 thread, `--cores {meta.get('load_core')}`) and the three "
             f"mock backends on core {meta.get('load_core')} (the *load core*); the proxy "
             f"under test alone on core {meta.get('proxy_core')} (`taskset -c "
             f"{meta.get('proxy_core')}`): gateway `workers: 1, pin_workers: false`, nginx "
             "`worker_processes 1`, HAProxy `nbthread 1`. All three proxies run for the whole "
             "benchmark and are idle when not measured.")
    L.append(f"- Ports (127.0.0.1): {meta.get('ports', '?')}.")
    L.append("- Targets: *direct* = loadgen straight to one mock backend (the ceiling); the "
             "proxies round-robin over 3 backends with upstream keep-alive "
             "(`bench/peers/nginx.conf`, `bench/peers/haproxy.cfg`, the gateway config is "
             "written by the script)."
             + (f" *{RELAY}* = HAProxy in `mode tcp` (`bench/peers/haproxy-tcp.cfg`, 1 thread, "
                "round-robin over the same 3 backends per connection, no health checks): a blind "
                "TCP relay that does no HTTP work (the backend receives the request as sent, "
                "`/v1/proxy/bench/...` included), the floor for moving the bytes through a "
                "process; not a peer, never the *better peer*."
                if any(r["target"] == RELAY for r in runs) else ""))
    L.append(f"- {meta.get('rounds')} round(s), interleaved (every target of a scenario in turn, "
             f"then the next scenario, then the next round); each run {meta.get('warmup_s')} s "
             f"warm-up + {meta.get('duration_s')} s measured.")
    L.append("- **CPU µs/req** (the primary figure): utime+stime of the proxy process and its "
             "children (`/proc/PID/stat` fields 14+15, in clock ticks of "
             f"{meta.get('clk_tck', '?')} Hz) sampled when loadgen's warm-up ends and when it "
             "exits, divided by the requests loadgen reports for the window. *Backend CPU* is "
             "the same for the three mock backends together.")
    L.append("- **load core % / proxy core %**: busy share of those cores over the same window: "
             "1 − (idle + iowait from `/proc/stat`) / wall time. (With NO_HZ the idle and iowait "
             "columns are measured, while the user/system columns are timer-tick samples that "
             "this VM under-counts; io_uring waits count as iowait.) ⚠ marks a run where the "
             "load core was ≥ 95% busy, i.e. the load side (loadgen + backends), not the proxy, "
             "capped throughput: then req/s compares the load side more than the proxy, while "
             "CPU/request still compares the proxies.")
    L.append("- **other CPU %**: busy time of the two cores minus the CPU time of the proxy, "
             "the backends and loadgen in the window, in % of one core: work that is not the "
             "benchmark, i.e. other processes on the shared machine (⚠ at ≥ 10%). Such a run's "
             "req/s and latency are disturbed; its CPU/request much less so. At 1 connection "
             "the cores idle between requests, and the interrupt and wake-up work done on an "
             "idle core is charged to no process, so 10–15% shows up there even when the "
             "machine is quiet.")
    L.append("- Latency is loadgen's: closed loop from write to end of response; open loop "
             "from the intended send time (coordinated omission corrected).")
    L.append("- The machine is not isolated: anything else running (e.g. compiles) shows up "
             "in the load average above and as noise; run-to-run noise is ±10–15%.")
    L.append("")
    L.append("## Targets")
    L.append("")
    disturbed = [r for r in runs if r["other_pct"] >= 10]
    L.append(f"Runs disturbed by other work on the machine (other CPU ≥ 10% of a core): "
             f"{len(disturbed)} of {len(runs)}"
             + (f", worst {max(r['other_pct'] for r in runs):.0f}%." if runs else "."))
    L.append("")
    L += targets_section(summary)
    L.append("")
    L += per_round_section(summary)
    L.append("")
    quiet = [r for r in runs if r["other_pct"] < 10]
    if quiet and len(quiet) < len(runs):
        L.append("### Undisturbed runs only (other CPU < 10%)")
        L.append("")
        L.append("Medians over the runs in which other work used < 10% of a core; n = runs "
                 "kept. Fewer runs, so noisier, but not skewed by the machine's other users.")
        L.append("")
        L.append("| scenario | target | n | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req |")
        L.append("|---|---|---|---|---|---|---|---|")
        for scen, targets in summary.items():
            for target in targets:
                rs = [r for r in quiet if r["scenario"] == scen and r["target"] == target]
                if not rs:
                    continue
                L.append(
                    f"| {scen} | {target} | {len(rs)} | {med([r['rps'] for r in rs]):.0f} "
                    f"| {ms(med([r['p50'] for r in rs]))} | {ms(med([r['p99'] for r in rs]))} "
                    f"| {ms(med([r['p999'] for r in rs]))} "
                    f"| {num(med([r['cpu_us'] for r in rs]), '{:.1f}')} |"
                )
        L.append("")
    for scen, targets in summary.items():
        L.append(f"## {scen}: {SCENARIOS.get(scen, scen)}")
        L.append("")
        if scen == "open-loop":
            rate = next(iter(targets.values()))["rate"]
            L.append(f"Fixed rate {rate:.0f} req/s over 64 connections (`BENCH_RATE`; "
                     "bench.sh's default is 10000, a rate the load core sustains without "
                     "saturating). *direct* is the tail of the load side alone: loadgen and "
                     "the backends share core 0, so it is a floor for every proxy's tail. "
                     "*gateway-spin* is the gateway with `busy_poll: 200us`. *spells ≥ 2 ms*: "
                     "how many 10-ms slices of the window had a request that took 2 ms or "
                     "more (loadgen's `timeline`; its text output names the worst slices): "
                     "a tail made of a few spells is a stall, one spread over many is "
                     "queueing.")
            L.append("")
        if scen == "breaker":
            L.append("Services with backends 19001, 19002 and 19004 (nothing listens on 19004). "
                     "Gateway: default breaker (5 consecutive failures open the circuit, 60 s "
                     "cooldown, then one probe); a refused connect is retried on the next "
                     "backend, so the circuit opens during the first warm-up without client "
                     "errors. nginx: `max_fails=1 fail_timeout=10s` (defaults) with "
                     "`proxy_next_upstream error`. HAProxy: health checks every 1 s plus "
                     "`observe layer4 error-limit 5 on-error mark-down`, `option redispatch 1`. "
                     "*vs 3-up* compares with the same proxy in get-c64.")
            L.append("")
        if scen in MIB_PER_REQUEST:
            L.append("Requests go to `/v1/proxy/bench/big/hello` (direct: `/big/hello`), where "
                     "nginx streams bodies through in memory (`proxy_request_buffering off`, "
                     "16 × 16 KiB response buffers, no temp file); the gateway and HAProxy "
                     "stream every body. *CPU µs/MiB* is the proxy's CPU per MiB of body "
                     "(1 MiB per request). The mock backends hash every uploaded byte and build "
                     "every 1 MiB answer afresh, on the load core, so the load side caps "
                     "throughput here: compare the proxies by CPU µs/MiB.")
            L.append("")
        if scen == "get-c10k":
            L.append("10000 keep-alive connections (loadgen opens them 256 at a time during "
                     "its setup and spreads their first requests over the first second of the "
                     "warm-up), a warm-up of at least 5 s for the proxies to settle, loadgen's "
                     "timeout raised to 30 s (a request waits ~10000 / throughput on "
                     "average), the gateway's connect timeout 10 s (as long as the peers "
                     "wait). Each proxy may open a backend connection per request in flight, "
                     "so clients plus backend connections approach the open-file limit "
                     "(20000 here): nginx has `worker_connections 19950` (when they run out "
                     "it closes idle client connections: *warm-up errors*, resets), HAProxy "
                     f"queues above 3000 per backend. No {RELAY} here: it needs two "
                     "descriptors per connection.")
            L.append("")
        lines, notes = scenario_table(scen, targets, summary)
        L += lines
        L.append("")
        for n in notes:
            L.append(f"_{n}_")
            L.append("")
        if scen in made:
            L.append(f"![{scen}]({made[scen]})")
            L.append("")
    profile = os.path.join(out, "profile-gateway-c64.txt")
    if os.path.exists(profile):
        L.append("## Where the gateway's time goes (perf, GET 64 conns)")
        L.append("")
        L.append("`perf record -g` on the gateway during one extra get-c64 run after the "
                 "measured rounds (`BENCH_PERF=1`); self time by symbol:")
        L.append("")
        L.append("```")
        with open(profile) as f:
            L += [line.rstrip("\n") for line in f]
        L.append("```")
        L.append("")
    L.append("## Every run")
    L.append("")
    L.append("| scenario | round | target | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | "
             "load core % | proxy core % | other CPU % | errors | file |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        L.append(
            f"| {r['scenario']} | {r['round']} | {r['target']} | {r['rps']:.0f} | {ms(r['p50'])} "
            f"| {ms(r['p99'])} | {ms(r['p999'])} | {num(r['cpu_us'], '{:.1f}')} "
            f"| {r['load_util']:.0f} | {r['proxy_util']:.0f} | {other(r['other_pct'])} "
            f"| {r['errors']} | `{r['json']}` |"
        )
    L.append("")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
