"""`minivlm-vqa` pipeline: image + question → answers with scores.

transformers 5 removed the stock visual-question-answering task, so MiniVLM registers its own
(`minivlm_hf.registration`), and `pipe.save_pretrained` ships this file as remote code.

Remote-code file: imports only transformers and sibling files.
"""

from __future__ import annotations

from transformers import Pipeline
from transformers.image_utils import load_image


class MiniVLMVQAPipeline(Pipeline):
    """
    ```python
    >>> vqa = pipeline("minivlm-vqa", model="path/or/hub-id")
    >>> vqa(image, question="what colour is the star?", top_k=2)
    [{"answer": "red", "score": 0.97}, {"answer": "blue", "score": 0.01}]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, top_k=None, timeout=None, question=None, **kwargs):
        preprocess, postprocess = {}, {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if question is not None:
            preprocess["question"] = question
        if top_k is not None:
            postprocess["top_k"] = top_k
        return preprocess, {}, postprocess

    def __call__(self, image, question: str | None = None, **kwargs):
        if isinstance(image, dict):  # {"image": ..., "question": ...}
            return super().__call__(image, **kwargs)
        if question is None:
            raise ValueError("the minivlm-vqa pipeline needs a question: vqa(image, question='...')")
        return super().__call__({"image": image, "question": question}, **kwargs)

    def preprocess(self, inputs, timeout=None, question=None):
        if "image" not in inputs or "question" not in inputs:
            raise ValueError("each input needs an 'image' and a 'question'")
        question = inputs["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"the question must be a non-empty string, got {question!r}")
        image = load_image(inputs["image"], timeout=timeout)
        return self.processor(images=image, text=inputs["question"], return_tensors="pt")

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k: int = 1):
        scores = "softmax" if getattr(self.model.config, "vqa_loss", "bce") == "softmax" else "sigmoid"
        return self.processor.post_process_vqa(
            model_outputs["logits"], self.model.config.id2label, top_k=top_k, score_function=scores
        )[0]


__all__ = ["MiniVLMVQAPipeline"]
