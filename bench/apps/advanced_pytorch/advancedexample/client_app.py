"""advancedexample: a stateful ClientApp; each client keeps its own head in its Context."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from advancedexample.task import Net, load_data
from advancedexample.task import test as test_fn
from advancedexample.task import train as train_fn

app = ClientApp()
HEAD = "local-head"


def model_for(msg: Message, context: Context) -> Net:
    net = Net()
    net.body.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    if HEAD in context.state:  # this client's own head, from its earlier rounds
        net.head.load_state_dict(context.state[HEAD].to_torch_state_dict())
    return net


@app.train()
def train(msg: Message, context: Context):
    pid = int(context.node_config["partition-id"])
    torch.manual_seed(
        int(context.run_config["seed"]) * 1000
        + pid * 10
        + int(msg.content["config"]["server-round"])
    )
    net = model_for(msg, context)
    trainloader, _ = load_data(pid, int(context.node_config["num-partitions"]))
    loss = train_fn(net, trainloader, float(msg.content["config"]["lr"]))
    context.state[HEAD] = ArrayRecord(net.head.state_dict())  # kept for the next round
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    return Message(
        RecordDict({"arrays": ArrayRecord(net.body.state_dict()), "metrics": metrics}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, context: Context):
    net = model_for(msg, context)
    _, testloader = load_data(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    loss, acc = test_fn(net, testloader)
    metrics = MetricRecord(
        {"eval_loss": loss, "eval_acc": acc, "num-examples": len(testloader.dataset)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
