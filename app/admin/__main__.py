from app.admin.cli import main

main()
