"""The three texts of nostalgebraist's post "interpreting GPT: the logit lens" (LessWrong, 2020),
ready for `minigpt lens --example NAME`.

- "gpt3-abstract": the post's main example: GPT-2 reading the abstract of "Language Models are
  Few-Shot Learners" (Brown et al. 2020, arXiv:2005.14165), here as arXiv prints it. The post's
  figures show a stretch in the middle ("... we train GPT-3, an autoregressive language model
  with 175 billion parameters ..."); the model sees all the text before it.
- "plasma": the post's "copying a rare token" text, quoted in the post. The last position must
  copy " plasma" from earlier in the text; the post shows the model finds it only in its last
  layers.
- "repetition": the post's "extreme repetition" section shows a text repeating itself exactly,
  as GPT's samples do when they fall into a loop; the post gives that text only inside a figure.
  This is a text of the same kind (one sentence repeated verbatim), not the post's own.
"""

GPT3_ABSTRACT = (
    "Recent work has demonstrated substantial gains on many NLP tasks and benchmarks by "
    "pre-training on a large corpus of text followed by fine-tuning on a specific task. While "
    "typically task-agnostic in architecture, this method still requires task-specific "
    "fine-tuning datasets of thousands or tens of thousands of examples. By contrast, humans can "
    "generally perform a new language task from only a few examples or from simple instructions "
    "- something which current NLP systems still largely struggle to do. Here we show that "
    "scaling up language models greatly improves task-agnostic, few-shot performance, sometimes "
    "even reaching competitiveness with prior state-of-the-art fine-tuning approaches. "
    "Specifically, we train GPT-3, an autoregressive language model with 175 billion parameters, "
    "10x more than any previous non-sparse language model, and test its performance in the "
    "few-shot setting. For all tasks, GPT-3 is applied without any gradient updates or "
    "fine-tuning, with tasks and few-shot demonstrations specified purely via text interaction "
    "with the model. GPT-3 achieves strong performance on many NLP datasets, including "
    "translation, question-answering, and cloze tasks, as well as several tasks that require "
    "on-the-fly reasoning or domain adaptation, such as unscrambling words, using a novel word "
    "in a sentence, or performing 3-digit arithmetic. At the same time, we also identify some "
    "datasets where GPT-3's few-shot learning still struggles, as well as some datasets where "
    "GPT-3 faces methodological issues related to training on large web corpora. Finally, we "
    "find that GPT-3 can generate samples of news articles which human evaluators have "
    "difficulty distinguishing from articles written by humans. We discuss broader societal "
    "impacts of this finding and of GPT-3 in general."
)

PLASMA = (
    "Sometimes, when people say plasma, they mean a state of matter. "
    "Other times, when people say plasma"
)

REPETITION = " ".join(
    ["The cat sat on the mat, and the dog sat on the rug."] * 5
)

EXAMPLES = {
    "plasma": PLASMA,
    "gpt3-abstract": GPT3_ABSTRACT,
    "repetition": REPETITION,
}
