"""Answer a question from a context with any saved extractive-QA model (transformers 5 has no
`pipeline("question-answering")` any more).

    python -m oto_hf.answer runs/quickstart/compressed_model \\
        --question "Which NFL team represented the AFC at Super Bowl 50?" \\
        --context "Super Bowl 50 was an American football game ... The AFC champion Denver Broncos ..."
"""

import argparse
import json
import sys
from pathlib import Path

from .tasks.squad import answer_question


def load_qa_model(path: str):
    """Model and tokenizer from a saved folder (compressed OTOBert or any `AutoModelForQuestionAnswering`)."""
    import oto_hf  # noqa: F401  (registers the compressed model classes with the Auto classes)
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    if not Path(path).exists():
        raise FileNotFoundError(f"no saved model at {path!r}: pass the folder written by save_pretrained / run_squad.py")
    return AutoModelForQuestionAnswering.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oto_hf.answer", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="folder of a saved question-answering model")
    parser.add_argument("--question", required=True)
    context = parser.add_mutually_exclusive_group(required=True)
    context.add_argument("--context", help="the text to answer from")
    context.add_argument("--context_file", help="a UTF-8 text file holding the context")
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    text = args.context if args.context is not None else Path(args.context_file).read_text(encoding="utf-8")
    model, tokenizer = load_qa_model(args.model)
    result = answer_question(model, tokenizer, args.question, text, max_answer_length=args.max_answer_length)
    print(json.dumps(result) if args.json else result["answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
