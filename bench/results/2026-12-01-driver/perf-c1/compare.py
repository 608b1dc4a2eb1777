"""Per-request CPU by category from the perf symbol lists (cpu-clock at 4000 Hz, 5 s)."""
import re
from collections import defaultdict


def load(f):
    rps = float(re.search(r'([\d.]+) req/s', open(f + '.txt').read()).group(1))
    d = {}
    for line in open(f + '.symbols.txt'):
        m = re.match(r'\s+([\d.]+)%\s+(\d+)\s+\[(.)\]\s+(\S+)', line)
        if m:
            d[(m.group(3), m.group(4))] = int(m.group(2)) * 250 / (rps * 5)
    return d


def cat(k):
    kind, s = k
    if kind != 'k':
        return 'user space'
    if s.startswith(('io_', '__io', '__do_sys_io_uring')) or s in (
            'fget', 'syscall', 'tctx_task_work', 'tctx_task_work_run', 'task_work_run',
            'sock_from_file'):
        return 'io_uring machinery'
    if 'epoll' in s or s.startswith('ep_') or s in (
            'fdget', 'sock_poll', 'tcp_poll', '__sys_recvfrom', '__x64_sys_recvfrom',
            '__sys_sendto', '__x64_sys_sendto'):
        return 'epoll and plain system calls'
    if s in ('_raw_spin_unlock_irqrestore', '_raw_spin_unlock_irq',
             'finish_task_switch.isra.0', 'try_to_wake_up', 'schedule', '__schedule'):
        return 'wake-ups and scheduling'
    return 'rest of the kernel (TCP, loopback)'


U = [load('uring-c1-1'), load('uring-c1-2')]
E = [load('epoll-c1-1'), load('epoll-c1-2')]
keys = set().union(*U, *E)
avg = lambda L, k: sum(x.get(k, 0) for x in L) / len(L)
cu, ce = defaultdict(float), defaultdict(float)
for k in keys:
    cu[cat(k)] += avg(U, k)
    ce[cat(k)] += avg(E, k)
print('µs per request (mean of 2 runs each) | io_uring | epoll')
for c in sorted(set(cu) | set(ce)):
    print('%-36s %6.1f %6.1f' % (c, cu[c], ce[c]))
print('%-36s %6.1f %6.1f' % ('total', sum(cu.values()), sum(ce.values())))
