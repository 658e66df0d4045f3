"""The built-in addition task: determinism, disjoint splits, solution/answer consistency."""
import pytest

from g2rpo_fast.data.arithmetic import generate_problems, make_dataset, split_of, worked_solution
from g2rpo_fast.rewards import accuracy_reward, extract_answer


def test_worked_solution_format():
    assert worked_solution(473, 958) == "3+8+0=11\n7+5+1=13\n4+9+1=14\n#### 1431"
    assert worked_solution(3, 4) == "3+4+0=07\n#### 7"


def test_deterministic_from_seed():
    a = generate_problems(50, seed=3)
    assert a == generate_problems(50, seed=3)
    assert a != generate_problems(50, seed=4)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_solution_ends_with_answer_and_is_right(split):
    for row in generate_problems(200, seed=0, difficulties=(1, 2, 3, 4, 5), split=split):
        a, b = row["prompt"][3:].split("=")[0].split("+")
        assert row["answer"] == str(int(a) + int(b))
        assert row["solution"].endswith("#### " + row["answer"])
        assert extract_answer(row["solution"]) == row["answer"]
        assert len(a) == len(b) == row["difficulty"]
        assert split_of(int(a), int(b)) == split


def test_splits_are_disjoint():
    train = {r["prompt"] for r in generate_problems(3000, seed=0, split="train")}
    evals = {r["prompt"] for r in generate_problems(300, seed=0, split="eval")}
    assert train and evals and not train & evals


def test_make_dataset_columns_and_difficulty_weights():
    ds = make_dataset(40, seed=1, difficulties={1: 0.0, 3: 1.0})
    assert ds.column_names == ["prompt", "solution", "answer", "difficulty"]
    assert set(ds["difficulty"]) == {3}
    assert isinstance(ds[0]["answer"], str)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_problems(1, split="test")
    with pytest.raises(ValueError, match="difficulties"):
        generate_problems(1, difficulties=[9])


def test_completion_is_short():
    # CPU roll-outs: the hardest default level fits max_completion_length=48 with EOS.
    longest = max(len(r["solution"]) for r in generate_problems(500, difficulties=[4]))
    assert longest + 1 <= 48


def test_the_accuracy_reward_grades_the_task():
    """The task has no answer checker of its own: `rewards.accuracy_reward` grades it."""
    completions = ["3+4+0=07\n#### 7", "#### 12\nrest", "no marker 7", "#### 71", worked_solution(473, 958)]
    answers = ["7", "12", "7", "7", "1431"]
    assert accuracy_reward(None, completions, answers) == [1.0, 1.0, 0.0, 0.0, 1.0]
