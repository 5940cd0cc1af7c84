"""Scale-out: the bot hands jobs to GPU worker processes on other machines through taskiq and
taskiq-redis's Redis Streams broker.

- `wire.py`: Redis key names and how requests and events travel (JSON; files out of band);
- `broker.py`: the taskiq broker and the worker registry (heartbeats);
- `queue.py`: `RedisJobQueue`, the bot's `JobQueue` over them;
- `worker.py`: `RemoteWorker`, one GPU's process: takes one job at a time and runs it through the
  same runtime as the embedded queue.
"""
