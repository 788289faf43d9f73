"""Teacher annotation and supervised fine-tuning data: how new refining models are made.

`sample` draws the documents, `rubric` holds the teacher's versioned instructions, `teacher`
reads and validates the teacher's answers, `annotate` runs the whole annotation, and `sft`
turns annotations into training examples with the same prompt builder as inference.
"""
