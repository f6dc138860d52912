import ShoalCLI

ShoalCommand.main()
