"""KPL-format interop with aws-kinesis-agg (a library nobody here wrote).

Reads JSON from stdin and writes JSON to stdout:
  deaggregate: [{"data": b64, "partition_key": str}] (Kinesis records)
               -> [{"data": b64, "partition_key": str, "explicit_hash_key": str|null}] (user records)
  aggregate:   [{"data": b64, "partition_key": str, "explicit_hash_key": str|null}] (user records)
               -> [{"data": b64, "partition_key": str, "explicit_hash_key": str|null}] (aggregates)
"""
import base64
import json
import sys

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records


def deaggregate(records):
    events = [
        {"kinesis": {"data": r["data"], "partitionKey": r["partition_key"],
                     "sequenceNumber": str(i + 1), "kinesisSchemaVersion": "1.0",
                     "approximateArrivalTimestamp": 0},
         "eventSource": "aws:kinesis"}
        for i, r in enumerate(records)
    ]
    out = []
    for user in deaggregate_records(events):
        k = user["kinesis"]
        data = k["data"].decode() if isinstance(k["data"], bytes) else k["data"]
        out.append({"data": data, "partition_key": k["partitionKey"],
                    "explicit_hash_key": k.get("explicitHashKey")})
    return out


def aggregate(records):
    done = []
    aggregator = RecordAggregator()
    aggregator.on_record_complete(lambda agg: done.append(agg))
    for r in records:
        complete = aggregator.add_user_record(r["partition_key"], base64.b64decode(r["data"]),
                                              r.get("explicit_hash_key"))
        if complete is not None and complete not in done:
            done.append(complete)
    last = aggregator.clear_and_get()
    if last is not None and last.get_num_user_records() > 0:
        done.append(last)
    out = []
    for agg in done:
        key, hash_key, data = agg.get_contents()
        out.append({"data": base64.b64encode(data).decode(), "partition_key": key,
                    "explicit_hash_key": hash_key})
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    records = json.load(sys.stdin)
    json.dump({"deaggregate": deaggregate, "aggregate": aggregate}[mode](records), sys.stdout)
