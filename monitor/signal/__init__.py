"""Signal: embed items, match them against topics, group matches into stories and decide novelty."""
