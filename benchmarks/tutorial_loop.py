"""The PyTorch "Transfer Learning for Computer Vision" tutorial's training, as the tutorial writes it.

The baseline that tl is measured against (benchmarks/compare.py), so it uses no tl code: the
tutorial's transforms, DataLoaders (batch 4, shuffled, 4 workers), ResNet-18 with a new fc layer,
SGD lr 1e-3 momentum 0.9, StepLR 7/0.1, and its `train_model` loop that keeps the best validation
weights. Only what a benchmark needs was added: arguments for the data, sizes and epochs, a seed,
EfficientNet-Lite0 as a second model, and a JSON record of when each epoch ended.

https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html
"""

from __future__ import annotations

import argparse
import json
import os
import time
from tempfile import TemporaryDirectory

import torch
from torch import nn, optim
from torch.optim import lr_scheduler
from torchvision import datasets, models, transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with train/<class>/ and val/<class>/")
    parser.add_argument("--scenario", choices=["finetune", "frozen"], required=True)
    parser.add_argument("--model", choices=["resnet18", "efficientnet_lite0"], default="resnet18")
    parser.add_argument("--weights", default="imagenet", help="imagenet, random, or a state dict file")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--resize-size", type=int, default=256)
    parser.add_argument("--interpolation", default="bilinear")
    parser.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406])
    parser.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", required=True, help="where to write the JSON record")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    interpolation = transforms.InterpolationMode(args.interpolation)
    data_transforms = {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(args.image_size, interpolation=interpolation),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(args.mean, args.std),
        ]),
        "val": transforms.Compose([
            transforms.Resize(args.resize_size, interpolation=interpolation),
            transforms.CenterCrop(args.image_size),
            transforms.ToTensor(),
            transforms.Normalize(args.mean, args.std),
        ]),
    }  # fmt: skip
    image_datasets = {x: datasets.ImageFolder(os.path.join(args.data, x), data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {
        x: torch.utils.data.DataLoader(
            image_datasets[x], batch_size=args.batch_size, shuffle=True, num_workers=args.workers
        )
        for x in ["train", "val"]
    }
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    class_names = image_datasets["train"].classes
    if args.device == "auto":
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    epoch_ends = []

    def train_model(model, criterion, optimizer, scheduler, num_epochs=25):
        since = time.time()
        # Create a temporary directory to save training checkpoints
        with TemporaryDirectory() as tempdir:
            best_model_params_path = os.path.join(tempdir, "best_model_params.pt")
            torch.save(model.state_dict(), best_model_params_path)
            best_acc = 0.0
            for epoch in range(num_epochs):
                print(f"Epoch {epoch}/{num_epochs - 1}", flush=True)
                # Each epoch has a training and validation phase
                for phase in ["train", "val"]:
                    if phase == "train":
                        model.train()  # Set model to training mode
                    else:
                        model.eval()  # Set model to evaluate mode
                    running_loss = 0.0
                    running_corrects = 0
                    # Iterate over data.
                    for inputs, labels in dataloaders[phase]:
                        inputs = inputs.to(device)
                        labels = labels.to(device)
                        # zero the parameter gradients
                        optimizer.zero_grad()
                        # forward; track history if only in train
                        with torch.set_grad_enabled(phase == "train"):
                            outputs = model(inputs)
                            _, preds = torch.max(outputs, 1)
                            loss = criterion(outputs, labels)
                            # backward + optimize only if in training phase
                            if phase == "train":
                                loss.backward()
                                optimizer.step()
                        # statistics
                        running_loss += loss.item() * inputs.size(0)
                        running_corrects += torch.sum(preds == labels.data)
                    if phase == "train":
                        scheduler.step()
                    epoch_loss = running_loss / dataset_sizes[phase]
                    epoch_acc = running_corrects.double() / dataset_sizes[phase]
                    print(f"{phase} Loss: {epoch_loss:.4f} Acc: {epoch_acc:.4f}", flush=True)
                    # deep copy the model
                    if phase == "val" and epoch_acc > best_acc:
                        best_acc = epoch_acc
                        torch.save(model.state_dict(), best_model_params_path)
                epoch_ends.append(time.time())
            time_elapsed = time.time() - since
            print(f"Training complete in {time_elapsed // 60:.0f}m {time_elapsed % 60:.0f}s")
            print(f"Best val Acc: {best_acc:4f}")
            # load best model weights
            model.load_state_dict(torch.load(best_model_params_path, weights_only=True))
        return model, float(best_acc)

    model = pretrained_model(args.model, args.weights)
    if args.scenario == "frozen":  # ConvNet as fixed feature extractor
        for param in model.parameters():
            param.requires_grad = False
    head = new_head(model, len(class_names))  # parameters of newly constructed modules have requires_grad=True
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    # finetune: all parameters are optimized; frozen: only the final layer's
    trained = model.parameters() if args.scenario == "finetune" else head.parameters()
    optimizer = optim.SGD(trained, lr=0.001, momentum=0.9)
    # Decay LR by a factor of 0.1 every 7 epochs
    exp_lr_scheduler = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    model, best_acc = train_model(model, criterion, optimizer, exp_lr_scheduler, num_epochs=args.epochs)
    with open(args.result, "w") as file:
        json.dump({"best_val_acc": best_acc, "epoch_ends": epoch_ends, "train_images": dataset_sizes["train"]}, file)


def pretrained_model(name: str, weights: str) -> nn.Module:
    if name == "resnet18":
        model = models.resnet18(weights="IMAGENET1K_V1" if weights == "imagenet" else None)
    else:  # the state dict is given as a file by benchmarks/compare.py (its package names tensors differently)
        import timm

        model = timm.create_model("tf_efficientnet_lite0")
    if weights not in ("imagenet", "random"):
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(model, models.ResNet):
        model.fc = nn.Linear(model.fc.in_features, num_classes)  # the tutorial's new final layer
        return model.fc
    model.reset_classifier(num_classes)
    return model.get_classifier()


if __name__ == "__main__":
    main()
