import time
t0=time.perf_counter(); last=t0; gaps=[]
while True:
    now=time.perf_counter()
    d=now-last
    if d>0.001: gaps.append((round(now-t0,3), round(d*1000,2)))
    last=now
    if now-t0>3: break
print(len(gaps), gaps[:20])
