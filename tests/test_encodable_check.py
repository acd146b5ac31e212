"""Issue 6 made check_encodable do one round trip when all is well; its errors must be unchanged."""
import pytest
import torch

from fl_smpc.secure_aggregation import AggregationError, check_encodable
from fl_smpc.workers import virtual_workers


@pytest.mark.parametrize("values, message", [
    ([1.0, -2.5], None),
    ([1.0, float("nan")], "non-finite"),
    ([float("-inf"), 0.0], "non-finite"),
    ([3.1e15, 0.0], r"magnitude >= 3\.07e\+15"),  # 2**63 / (3 * 10**3)
])
def test_check_encodable_errors_name_the_worker_and_the_problem(values, message, hook):
    with virtual_workers(["enc0"], hook) as (worker,):
        ptr = torch.tensor(values).send(worker)
        if message is None:
            check_encodable(ptr, "enc0", 3, 3)
        else:
            with pytest.raises(AggregationError, match=message) as err:
                check_encodable(ptr, "enc0", 3, 3)
            assert err.value.worker == "enc0"
