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


class AnswerError(ValueError):
    """Input `python -m oto_hf.answer` refuses: the message says what is wrong and what to do."""


def check_qa_model(path: str) -> None:
    """Refuse, before loading any weights, a folder that is not there, whose config cannot be read, whose config's
    `architectures` names no question-answering model (a classifier would get a random QA head and answer with made-up
    spans), or whose weight files are torn."""
    from transformers import AutoConfig

    from .tasks.common import check_weight_files

    if not Path(path).is_dir():
        raise AnswerError(f"no such folder {path!r}: pass the folder written by save_pretrained / run_squad.py")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise AnswerError(f"cannot read a model config in {path!r}: {error}") from error
    architectures = getattr(config, "architectures", None) or []
    if not any(name.endswith("ForQuestionAnswering") for name in architectures):
        raise AnswerError(
            f"{path!r} is not a question-answering model (its config names {architectures or 'no architecture'}): "
            "answering needs a model trained on extractive QA, such as the compressed_model folder of run_squad.py")
    try:
        check_weight_files(path)
    except ValueError as error:
        raise AnswerError(str(error)) from error


def load_qa_model(path: str):
    """Model and tokenizer from a saved folder (compressed OTOBert or any `AutoModelForQuestionAnswering`), after
    `check_qa_model`."""
    import oto_hf  # noqa: F401  (registers the compressed model classes with the Auto classes)
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    check_qa_model(path)
    return AutoModelForQuestionAnswering.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def main(argv=None) -> int:
    prog = "python -m oto_hf.answer"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="folder of a saved question-answering model")
    parser.add_argument("--question", required=True)
    context = parser.add_mutually_exclusive_group(required=True)
    context.add_argument("--context", help="the text to answer from")
    context.add_argument("--context_file", help="a UTF-8 text file holding the context")
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    try:
        if not args.question.strip():
            raise AnswerError("--question is blank: ask a question")
        if args.context is not None:
            text = args.context
        else:
            try:
                text = Path(args.context_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise AnswerError(f"--context_file {args.context_file!r} cannot be read: {error}") from error
        if not text.strip():
            raise AnswerError("the context is blank: give the text to answer from (--context or --context_file)")
        model, tokenizer = load_qa_model(args.model)
    except AnswerError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    result = answer_question(model, tokenizer, args.question, text, max_answer_length=args.max_answer_length)
    print(json.dumps(result) if args.json else result["answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
