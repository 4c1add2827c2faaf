"""MiniVLM web demo as a Hugging Face Space (Gradio SDK).

Set the Space variable MINIVLM_MODELS to the checkpoints to serve (Hub ids, space-separated), e.g.
"namespace/minivlm-detector namespace/minivlm-caption namespace/minivlm-vqa". Locally the same app runs as
`minivlm-hf serve MODEL ...`.
"""

from minivlm_hf.serve.app import build_app, launch_options, model_from_environment

demo = build_app(model_from_environment())

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1).launch(**launch_options())
