# The router, installed and started the way the README's two commands do it.
# Not built in CI here (no Docker on the CI machines); see README, "Docker".
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN python3 -m pip install --no-cache-dir -e '.[all]'
EXPOSE 8000
# 0.0.0.0: reachable from outside the container. Without OPENROUTER_API_KEY it answers from the
# simulated upstream and says so.
CMD ["adaptive-router", "serve", "--host", "0.0.0.0", "--port", "8000"]
