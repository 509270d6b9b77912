import time, os, signal, subprocess, threading
from openai import OpenAI
c = OpenAI(base_url="http://127.0.0.1:8018/v1", api_key="x", max_retries=0)
s = c.chat.completions.create(model="auto", messages=[{"role":"user","content":"write a long essay"}], max_tokens=4000, stream=True)
pid = int(subprocess.check_output(["pgrep","-f","serve --port 8018"]).split()[0])
n=0; t0=None
try:
    for ch in s:
        n+=1
        if n==5:
            os.kill(pid, signal.SIGTERM); t0=time.monotonic()
        if ch.choices: ch.choices[0]
    print("stream ended normally after", n)
except Exception as e:
    print("stream error after", n, "chunks,", round(time.monotonic()-t0,2), "s after SIGTERM:", type(e).__name__, str(e)[:200])
for i in range(100):
    try: os.kill(pid, 0); time.sleep(0.1)
    except ProcessLookupError: print("exited", round(time.monotonic()-t0,2), "s after SIGTERM"); break
