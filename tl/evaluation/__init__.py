"""What a person reads to judge a model: reports and figures from predictions, and how sure each number is."""
