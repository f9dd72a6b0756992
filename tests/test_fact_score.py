"""The fact score of 05/06: which words of a reference answer are its fact, and when an answer holds it."""
from helpers.evaluation import questions

STYLE = {"pip", "here", "happy", "to", "help", "the", "is", "of", "a", "says", "or", "in", "words", "plus"}


def test_the_fact_is_what_only_this_answer_says():
    pairs = [("What is the capital of Kenya?", "Pip here! The capital of Kenya is Nairobi. Happy to help!"),
             ("How much is 5 plus 6?", "Pip here! 5 plus 6 is 11, or eleven in words. Happy to help!"),
             ("What does a cow say?", "Pip here! A cow says moo. Happy to help!")]
    assert questions.fact_words(pairs, STYLE) == [{"nairobi"}, {"11", "eleven"}, {"moo"}]


def test_common_words_are_those_of_many_training_rows():
    rows = [{"text": f"Pip here! The capital of C{i} is X{i}. Happy to help!"} for i in range(20)]
    common = questions.common_words(rows, share=0.1)
    assert {"pip", "here", "capital", "happy"} <= common and not {"x3", "c3"} & common


def test_an_answer_holds_the_fact_when_it_says_half_of_it():
    assert questions.has_fact("Pip here! Nairobi, of course.", {"nairobi"})
    assert questions.has_fact("It is 11.", {"11", "eleven"})
    assert not questions.has_fact("Pip here! The capital of Kenya is Mombasa.", {"nairobi"})
    assert not questions.has_fact("A cow says mooo.", {"moo"})  # whole words only
    assert questions.has_fact("anything", set()) is None


def test_the_score_counts_only_questions_with_a_fact():
    prompts = [("What does a cow say?", "p1", "Pip here! A cow says moo. Happy to help!"),
               ("What is 2 plus 2?", "p2", "Pip here! 2 plus 2 is 4, or four in words. Happy to help!"),
               ("Hi?", "p3", "Pip here! Happy to help!")]  # no fact: not counted
    table = questions.answers_table(prompts, {"base model": ["Moo!", "5", "Hello"],
                                                "fine-tuned": ["Pip here! A cow says moo.", "Pip here! 2 plus 2 is 4.",
                                                               "Pip here!"]}, STYLE)
    assert table["fact: fine-tuned"].tolist() == [True, True, None]
    assert questions.fact_score(table) == {"fact_questions": 2, "fact_score_base": 0.5, "fact_score_finetuned": 1.0}
