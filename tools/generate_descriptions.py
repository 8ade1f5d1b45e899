"""Write a TSE attribute-description file with an OpenAI-compatible chat-completions endpoint.

    python tools/generate_descriptions.py --dataset voc --out prompts/voc_descriptions.json
    python tools/generate_descriptions.py --classes "cat,dog" --out work_dirs/pets.json \\
        --base-url http://localhost:8000/v1 --model my-model

Options, retries, resuming and limits: excel/prep/description_generation.py (or --help); also installed as
``excel-generate-descriptions``.
"""
from excel.prep.description_generation import main

if __name__ == "__main__":
    main()
