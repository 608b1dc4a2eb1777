import csv, json, sys, os, statistics
d = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(d, 'runs.tsv')), delimiter='\t'))
cost = {}
lat = {}
for r in rows:
    j = json.load(open(os.path.join(d, r['json'])))
    n = j['requests']
    if n and r['proxy_ticks'] not in ('', '0'):
        cost[(r['scenario'], int(r['round']), r['target'])] = int(r['proxy_ticks']) * 1e6 / int(r['clk_tck']) / n
    lu = j.get('latency_us') or {}
    lat[(r['scenario'], int(r['round']), r['target'])] = lu
scen = sorted({k[0] for k in cost})
for s in scen:
    rounds = sorted({k[1] for k in cost if k[0] == s})
    tg = 'gateway-1down' if s == 'breaker' else 'gateway'
    pe = ['nginx-1down', 'haproxy-1down'] if s == 'breaker' else ['nginx', 'haproxy']
    out = []
    for rd in rounds:
        g = cost.get((s, rd, tg)); p = [cost.get((s, rd, x)) for x in pe]; p = [x for x in p if x]
        t = cost.get((s, rd, 'tcp-relay'))
        if g and p:
            out.append((rd, g, min(p), g / min(p), g / t if t else None))
    if out:
        print(s, 'gw/peer per round:', ' '.join('%.2f' % o[3] for o in out), ' median %.2f' % statistics.median(o[3] for o in out),
              '| gw', ' '.join('%.1f' % o[1] for o in out), '| peer', ' '.join('%.1f' % o[2] for o in out),
              ('| relay ratio ' + ' '.join('%.2f' % o[4] for o in out)) if out[0][4] else '')
