import argparse

import uvicorn

from devllm.app import create_app

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m devllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8110)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
