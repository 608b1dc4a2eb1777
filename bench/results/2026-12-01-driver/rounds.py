import csv,json,os,sys,statistics
d=sys.argv[1]
rows=[r for r in csv.DictReader(open(os.path.join(d,'runs.tsv')),delimiter='\t') if r['scenario']==sys.argv[2]]
by={}
for r in rows:
    j=json.load(open(os.path.join(d,r['json']))); l=j['latency_us']
    by.setdefault(r['round'],{})[r['target']]=(l['p50'],l['p99'],l['p99_9'],float(r['proxy_ticks'] or 0)*1e4/j['requests'] if r['proxy_ticks'] else 0, j['rps'])
R=[]
for rd,t in sorted(by.items()):
    if 'gateway-spin' not in t: continue
    u=t['gateway'];e=t['gateway-spin'];n=t.get('nginx');h=t.get('haproxy')
    R.append((u,e,n,h))
    print(rd,'uring p50 %4d p99 %5d p99.9 %5d cpu %.1f rps %.0f| epoll p50 %4d p99 %5d p99.9 %5d cpu %.1f rps %.0f| nginx p99 %5d cpu %.1f | hap p99 %5d cpu %.1f | e/u cpu %.2f p99 %.2f'%(*u,*e,n[1],n[3],h[1],h[3],e[3]/u[3],e[1]/u[1]))
med=lambda f:statistics.median(f)
print('median cpu uring %.1f epoll %.1f nginx %.1f hap %.1f; p99 uring %d epoll %d nginx %d hap %d'%(med([r[0][3] for r in R]),med([r[1][3] for r in R]),med([r[2][3] for r in R]),med([r[3][3] for r in R]),med([r[0][1] for r in R]),med([r[1][1] for r in R]),med([r[2][1] for r in R]),med([r[3][1] for r in R])))
